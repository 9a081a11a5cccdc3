"""The training loop: `train` resumes from the latest complete checkpoint, dispatches step
N+1 before reading step N's metrics, evaluates, saves, and on SIGTERM or Ctrl-C saves and
returns cleanly; the guard (`growjax.train.guard`) decides what bad numbers do."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax import console
from growjax import data as data_lib
from growjax import faults
from growjax import sharding
from growjax.data import tokenizer_record
from growjax.model import decode
from growjax.train import attention_choice
from growjax.train import guard as guard_lib
from growjax.train import mask_ramp
from growjax.train import metrics as metrics_lib
from growjax.train import state as state_lib
from growjax.train.state import (Setup, build, run_meta, to_host)
from growjax.train.accounting import Accounting
from growjax.train.batches import HostBatches
from growjax.train.recovery import BadStepsError, Recovery, all_finite  # noqa: F401
from growjax.train.resume import restore_or_init, run_tokenizer
from growjax.train.step import (make_eval_step, make_fp8_calibration,
                                make_train_step)


def _open_data(setup: Setup):
  """The train iterator and the fixed eval set, each process loading the rows it holds."""
  cfg, tc = setup.cfg, setup.cfg.train
  host = HostBatches.of(setup.batch_sharding, tc.global_batch_size)
  data_iter = data_lib.train_iterator(cfg.data, global_batch_size=tc.global_batch_size,
                                      seed=cfg.seed, rows=host.rows)
  eval_data = [host.to_global(b) for b in data_lib.eval_batches(
      cfg.data, global_batch_size=tc.global_batch_size, num_batches=tc.eval_batches,
      rows=host.rows)]
  return host, data_iter, eval_data


def train(cfg: ml_collections.ConfigDict, workdir: str, *, devices=None,
          stop_after_steps: int | None = None, later_flops: float = 0.0) -> dict[str, Any]:
  """Runs (or resumes) a training run; returns the logged train / eval losses by step
  (`loss`, `eval_loss`) and `stopped_at`: the step it stopped early at, or None.

  `stop_after_steps` stops like a preemption after that many steps of this call
  (used by tests and by multi-stage runs). `later_flops`: the training FLOPs of the
  stages after this one (a grow run), for the run-wide ETA. Metrics and checkpoints in
  flight are flushed however the run ends.
  """
  cfg = attention_choice.choose(cfg, devices)
  setup = build(cfg, devices)
  config_lib.validate_data(cfg)
  tc = cfg.train
  loggers = config_lib.loggers(tc)
  writer = metrics_lib.MetricWriter(
      workdir, enabled=jax.process_index() == 0,
      tensorboard=cfg.metrics.tensorboard and "tensorboard" in loggers,
      wandb="wandb" in loggers, wandb_project=tc.get("wandb_project", ""),
      config=cfg.to_dict())
  checkpoints = ckpt_lib.Checkpoints(str(epath.Path(workdir) / "checkpoints"),
                                     save_every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                                     use_async=tc.async_checkpointing,
                                     on_saved=lambda *a: writer.text(saved_line(*a)))
  try:
    tokenizer, tokenizer_spec = run_tokenizer(cfg, checkpoints)
    loop = _Loop(setup, writer, checkpoints, stop_after_steps)
    loop.meta[tokenizer_record.META_KEY] = tokenizer
    loop.account.later_flops = float(later_flops)
    history = loop.run()
    if tc.get("final_sample_tokens", 0) and history.get("stopped_at") is None:
      final_sample(setup, loop.state.params, writer, tokenizer_spec)
    return history
  finally:
    checkpoints.wait()
    checkpoints.close()
    writer.close()


def saved_line(step: int, seconds: float, size: int | None) -> str:
  """The console line of a finished checkpoint save."""
  what = "" if size is None else f", {size / 2**20:,.1f} MiB"
  return f"checkpoint step {step} saved in {seconds:.1f}s{what}"


def final_sample(setup: Setup, params: Any, writer, spec: str | None = None) -> str | None:
  """The end of `growjax train`: a short greedy sample of `config.train.final_sample_prompt`
  (`config.train.final_sample_tokens` tokens), so a run shows what its model writes;
  decoded with the run's tokenizer (`spec`, its data's), `config.data.tokenizer` when
  none is given."""
  tc, cfg = setup.cfg.train, setup.cfg
  n = int(tc.get("final_sample_tokens", 0) or 0)
  if n <= 0:
    return None
  tok = data_lib.make_tokenizer(spec or cfg.data.tokenizer)
  prompt = tc.get("final_sample_prompt", "") or ""
  with jax.set_mesh(setup.mesh):
    [text], t = decode.generate_text(setup.model_cfg, params, tok, [prompt], max_new_tokens=n,
                              mesh=setup.mesh)
  writer.text(f"sample of the trained model ({n} tokens, greedy, "
              f"{t['tokens_per_s']:.0f} tokens/s):\n{prompt}{text}")
  return text


class _Profile:
  """`config.train.profile_steps` (A, B): a `jax.profiler` trace of steps A..B into
  WORKDIR/profile (`plugins/profile/<run>/<host>.xplane.pb`, for TensorBoard's profile
  plugin or XProf; jax.profiler writes `gs://` too). The trace starts before step A is
  dispatched and stops once step B has finished on the device, so the steps are whole.
  A run resumed past A takes no trace."""

  def __init__(self, steps: tuple[int, int] | None, writer):
    self.steps, self.writer = steps, writer
    self.dir = str(epath.Path(writer.workdir) / "profile") if steps else None  # every process
    self.active = False

  def __enter__(self):
    return self

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0] and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(state)
      self._stop()

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    self.active = False
    self.writer.text(f"profile of steps {self.steps[0]}..{self.steps[1]} written to "
                     f"{self.dir} (tensorboard --logdir {self.dir})")

  def __exit__(self, *exc):
    if self.active:   # the run stopped inside the range: keep what was traced
      self._stop()


class _Loop(Recovery):
  """One call of `train`: restore, then step, report, evaluate and save until done.

  Bad numbers (`growjax.train.guard` decides): a step whose loss or gradient norm is not
  finite is skipped inside the jitted step (params and optimizer state kept) and read
  here one step late (its flags are read after the next step is dispatched, and at
  each save before the save); no checkpoint is written inside a streak of them or with
  non-finite params, and `max_bad_steps` in a row stop the run. A loss spike (and an
  eval loss that is not finite or jumps) rolls back to the newest good checkpoint and
  skips the batches since it. Checkpoints of a model known bad are set aside.
  """

  def __init__(self, setup: Setup, writer, checkpoints: ckpt_lib.Checkpoints,
               stop_after_steps: int | None):
    self.setup, self.writer, self.checkpoints = setup, writer, checkpoints
    self.stop_after_steps = stop_after_steps
    self.host, self.data_iter, self.eval_data = _open_data(setup)
    self.state, restored_meta = restore_or_init(setup, checkpoints, self.data_iter, writer)
    self.train_step, self.eval_step = make_train_step(setup), make_eval_step(setup)
    self.meta = dict(run_meta(setup),
                     small_stage_flops=float(restored_meta.get("small_stage_flops", 0.0)))
    if self.state.fp8_history is not None:
      self.meta[ckpt_lib.FP8_HISTORY_META] = setup.model_cfg.fp8_amax_history
    # MSG growth: while the state holds masks, the ramp's steps; then the plain ones.
    self.ramp = mask_ramp.restored(restored_meta)
    if self.ramp is not None:
      self.masked_train_step = make_train_step(setup, self.ramp)
      self.masked_eval_step = make_eval_step(setup, self.ramp)
      self.meta[mask_ramp.META_KEY] = self.ramp.to_meta()
    self._arm_fp8_calibration()
    self.compiled: set = set()        # the step functions called once (compiled) so far
    self.step = int(to_host(self.state.step))
    self.start_step = self.step
    self.account = Accounting(setup, self.step, restored_meta)
    self.history: dict[str, Any] = {"loss": {}, "eval_loss": {}, "stopped_at": None,
                                    "skipped": [], "rollbacks": []}
    self.bad_steps_total = 0
    self.guard = guard_lib.Guard(setup.cfg.train, self.step, restored_meta,
                                 resumed_checkpoint=self.step in checkpoints.complete_steps())
    self.checkpoints.mark_good(self.guard.good_step)
    self.rollbacks_to: dict[int, int] = {}   # checkpoint step -> rollbacks to it
    self.params_finite = jax.jit(all_finite, out_shardings=sharding.replicated(setup.mesh))
    self.last = None                  # (step, metrics) of the last dispatched step
    self.replay_batch = None          # a batch to feed again after a rollback

  def report(self, step: int, device_metrics: dict, eval_loss: float | None) -> None:
    values, eta = self.account.values(step, device_metrics, eval_loss)
    if self.meta["small_stage_flops"]:
      values["small_stage_flops"] = self.meta["small_stage_flops"]
    values["bad_steps_total"] = self.bad_steps_total
    self.history["loss"][step] = values["loss"]
    self.writer.scalars(step, values)
    self.writer.text(metrics_lib.format_progress(step, self.setup.cfg.train.steps, values,
                                                 eta, self.account.run_eta(values, eta)))

  def evaluate(self) -> float:
    # Queue every eval batch before reading any: one host sync, not one per batch.
    masked = self.state.masks is not None
    first_call = (self.masked_eval_step if masked else self.eval_step) not in self.compiled
    t0 = time.perf_counter()
    if first_call:
      self.writer.text("compiling the eval step ...")
    if masked:
      losses = [self.masked_eval_step(self.state.params, b, self.state.masks)
                for b in self.eval_data]
    else:
      losses = [self.eval_step(self.state.params, b) for b in self.eval_data]
    if first_call:
      self.compiled.add(self.masked_eval_step if masked else self.eval_step)
      self.writer.text(f"compiled the eval step in {time.perf_counter() - t0:.1f}s")
    return float(np.mean(to_host(losses)))

  def should_stop(self) -> bool:
    """SIGTERM / preemption (agreed by all processes), or `stop_after_steps` reached.
    `reached_preemption` is asked at every step, as JAX's sync protocol needs."""
    preempted = self.checkpoints.reached_preemption(self.step)
    return self.signal.event.is_set() or preempted or (
        self.stop_after_steps is not None and
        self.step - self.start_step >= self.stop_after_steps)

  def one_step(self, pending):
    """Dispatches a step, then reads the previous step's metrics (the device already
    has this one queued); returns what to report after the next step."""
    tc = self.setup.cfg.train
    t0 = time.perf_counter()
    host_batch, self.replay_batch = self.replay_batch or next(self.data_iter), None
    global_batch = self.host.to_global(host_batch)
    t1 = time.perf_counter()
    step_fn = self.train_step if self.state.masks is None else self.masked_train_step
    if self.fp8_calibration is not None:
      calibrate, self.fp8_calibration = self.fp8_calibration, None
      self.state = calibrate(self.state, global_batch)
      self.writer.text("fp8: amax histories calibrated by one current-scaling pass over the "
                       "first batch; delayed scaling from here on")
    first_call = step_fn not in self.compiled
    if first_call:
      self.writer.text("compiling the train step ...")
    self.state, step_metrics = step_fn(self.state, global_batch)
    if first_call:   # jit compiles on the first call, before it dispatches
      self.writer.text(f"compiled the train step in {time.perf_counter() - t1:.1f}s")
    # After the first (compiling) call, a dispatch returns at once unless the runtime
    # holds it back for the device (on GPU, donating a state the previous step still
    # uses): that wait is device time.
    self.account.stalls.add("data_s", t1 - t0)
    if not first_call:
      self.account.stalls.add("device_s", time.perf_counter() - t1)
    self.compiled.add(step_fn)
    faults.maybe_kill("mid_step")
    self.step += 1
    if self.state.masks is not None and not self.ramp.active(self.step):
      # The masks are all 1: they leave the state, and the plain step takes over.
      self.state = self.state.replace(masks=None)
    previous, self.last = self.last, (self.step, step_metrics, host_batch)
    if previous is not None and self.check_numbers(*previous):
      return None                     # rolled back: the pending report is of dropped steps
    if pending is not None:
      self.report(*pending)
    eval_loss = None
    if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.steps:
      eval_loss = self.account.stalls.timed("eval_s", self.state, self.evaluate)
      self.history["eval_loss"][self.step] = eval_loss
      spike = self.guard.observe_eval(self.step, eval_loss)
      if spike is not None:
        self.last = None              # this step's batch is among those skipped
        if self.roll_back(self.step, spike):
          return None
    if self.step % tc.log_every == 0 or self.step == tc.steps or eval_loss is not None:
      return (self.step, step_metrics, eval_loss)
    return None

  def _arm_fp8_calibration(self) -> None:
    """Delayed FP8 scaling from zero histories (a fresh, grown or imported model, a
    checkpoint without them): one current-scaling pass over the next batch fills them
    before the next step (growjax.model.fp8)."""
    self.fp8_calibration = None if state_lib.fp8_calibrated(self.state) else (
        make_fp8_calibration(self.setup, self.ramp if self.state.masks is not None else None))

  def run(self) -> dict[str, Any]:
    setup, tc = self.setup, self.setup.cfg.train
    if self.step >= tc.steps:
      self.writer.text(f"nothing to do: checkpoint step {self.step} >= "
                       f"config.train.steps={tc.steps}")
    self.writer.text(
        f"model {setup.model_cfg.num_params() / 1e6:.1f}M params"
        + (f" ({setup.model_cfg.num_params(active=True) / 1e6:.1f}M active: "
           f"{setup.model_cfg.experts_per_token} of {setup.model_cfg.num_experts} experts)"
           if setup.model_cfg.num_experts else "") + ", "
        f"{self.account.flops_per_token / 1e9:.3g} GFLOP/token, mesh {dict(setup.mesh.shape)}, "
        f"{setup.tokens_per_step} tokens/step, steps {self.step}->{tc.steps}")
    pending = None
    profile = _Profile(config_lib.profile_steps(tc), self.writer)
    # SIGTERM (a preemption) or Ctrl-C -> save and return (growjax.console.StopSignal).
    with console.StopSignal() as self.signal, jax.set_mesh(setup.mesh), profile:
      while self.step < tc.steps:
        profile.before(self.step + 1)
        pending = self.one_step(pending)
        profile.after(self.step, self.state)
        interrupted = self.should_stop()
        saved = self.save(force=interrupted or self.step == tc.steps)
        if saved == "rolled back":
          pending = None              # the pending report is of dropped steps
        if interrupted:
          self.writer.text(f"stopping at step {self.step}: " + (
              "checkpoint saved" if saved != "not saved" else
              f"not saved; the rerun resumes from {self._good_text()}"))
          self.history["stopped_at"] = self.step if self.step < tc.steps else None
          break
      if self.last is not None:
        self.check_numbers(*self.last, spike_guard=False)
      if pending is not None:
        self.report(*pending)
    return self.history
