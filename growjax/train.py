"""The training loop: one jitted train step, eval, checkpoints, metrics.

The state and its layout come from `growjax.state`. The train step is a pure
`(state, batch) -> (state, metrics)` function jitted with in/out shardings and
donated state. `train` drives it: it resumes from the latest
complete checkpoint, dispatches step N+1 before reading step N's metrics,
evaluates, saves, and on SIGTERM saves and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import attention_choice
from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax import console
from growjax import data as data_lib
from growjax import distributed
from growjax import faults
from growjax import fp8
from growjax import guard as guard_lib
from growjax import loss as loss_lib
from growjax import mask_ramp
from growjax import metrics as metrics_lib
from growjax import sharding
from growjax import state as state_lib
from growjax.model import ModelConfig, Transformer, head_kernel
from growjax.state import (Setup, TrainState, build, init_state, run_meta, to_host,
                           with_fp8_history)


DOCUMENT_KEYS = ("segment_ids", "positions")  # what document masking reads of a batch


def loss_fn(params, batch, model_cfg: ModelConfig, train_cfg, z_loss: float, masks=None,
            fp8_history=None):
  """Mean loss over the targets `batch['loss_mask']` counts (all when absent). With
  `segment_ids` / `positions` in the batch, attention stays inside each packed
  document and rotary positions restart at each one. `masks`: MSG growth's mask values
  during a ramp (`growjax.mask_ramp`), else None. `fp8_history`: delayed FP8 scaling's
  amax histories (their gradient is the amaxes this pass observed), else None."""
  variables = {"params": params}
  if fp8_history is not None:
    variables[fp8.HISTORY_COLLECTION] = fp8_history
  hidden = Transformer(model_cfg).apply(
      variables, batch["inputs"], segment_ids=batch.get("segment_ids"),
      positions=batch.get("positions"), return_hidden=True, masks=masks)
  return loss_lib.cross_entropy(hidden, head_kernel(params, model_cfg), batch["targets"],
                                z_loss=z_loss, chunk_len=train_cfg.loss_chunk_len,
                                dtype=model_cfg.compute_dtype, mask_BxT=batch.get("loss_mask"))


def model_batch(batch: dict, cfg) -> dict:
  """The batch the step computes on: without the document keys when
  `config.data.document_masking` is off (one causal sequence per window)."""
  if cfg.data.get("document_masking", True):
    return batch
  return {k: v for k, v in batch.items() if k not in DOCUMENT_KEYS}


def fast_path_enabled(setup: Setup) -> bool:
  """`config.model.single_document_fast_path` resolved: 'auto' is on where the devices
  are GPUs (there the masked cuDNN kernels cost 4-8% at 1.1B; elsewhere the second branch
  would only double the step's compile time), and only with document masking on."""
  mode = setup.model_cfg.single_document_fast_path
  if not setup.cfg.data.get("document_masking", True) or mode == "off":
    return False
  return mode == "on" or setup.mesh.devices.flat[0].platform == "gpu"


def single_documents(batch: dict) -> jax.Array:
  """True where every row of `batch` is one whole document: segment id 1 everywhere (no
  padding, no document boundary) and positions 0..T-1 — what causal attention without the
  document keys computes. A scalar over the global batch: every device agrees on it."""
  segment_ids_BxT, positions_BxT = batch["segment_ids"], batch["positions"]
  arange_T = jnp.arange(positions_BxT.shape[-1], dtype=positions_BxT.dtype)
  return jnp.all(segment_ids_BxT == 1) & jnp.all(positions_BxT == arange_T)


def single_document_cond(fn: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
  """`fn(params, batch)` behind a `lax.cond`: a batch of single-document rows takes `fn`
  without `segment_ids` / `positions` (plain causal attention: the same values, without
  the masked kernel's cost), any other batch `fn` as given. `fn` is the whole
  value-and-grad, so the two branches' autodiff residuals live in separate branches of
  the conditional and XLA can share their temporaries."""

  def plain(params, batch):
    return fn(params, {k: v for k, v in batch.items() if k not in DOCUMENT_KEYS})

  def either(params, batch):
    if not all(k in batch for k in DOCUMENT_KEYS):
      return fn(params, batch)
    return jax.lax.cond(single_documents(batch), plain, fn, params, batch)

  return either


def make_train_step(setup: Setup, ramp: mask_ramp.Plan | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted train step; with `ramp`, the step of a grown run's MSG mask ramp: the
  state carries the masks, the step computes with them and writes the next step's.
  With the single-document fast path (`fast_path_enabled`), each micro-batch (the whole
  batch without accumulation) chooses its branch on its own."""
  cfg, tx = setup.cfg, setup.tx

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with sharding.activation_sharding(setup.mesh, setup.rules):
      grads, aux, seen = _gradients(setup, state, model_batch(batch, cfg))
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      grad_norm = optax.global_norm(grads)
      # A NaN/Inf loss or gradient norm: keep params and optimizer state (per leaf, so the
      # TrainState structure is unchanged); the step counter still advances.
      ok = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      history = keep(fp8.push_history(state.fp8_history, seen), state.fp8_history)
    metrics = dict(aux, grad_norm=grad_norm, lr=setup.schedule(state.step),
                   skipped=(~ok).astype(jnp.float32))
    new = TrainState(state.step + 1, params, opt_state, fp8_history=history)
    if ramp is None:
      return new, metrics
    metrics["mask_ramp"] = jnp.clip((state.step - ramp.start) / ramp.ramp, 0.0, 1.0)
    return new.replace(masks=ramp.values(state.step + 1)), metrics

  shardings = state_shardings(setup, ramp)
  return jax.jit(step_fn, in_shardings=(shardings, setup.batch_sharding),
                 out_shardings=(shardings, sharding.replicated(setup.mesh)),
                 donate_argnums=0)


def _gradients(setup: Setup, state: TrainState, batch: dict) -> tuple[Any, dict, Any]:
  """(gradients, loss metrics, observed FP8 amaxes) of one batch, averaged over
  `config.train.grad_accum_steps` micro-batches; the amaxes (None without delayed FP8
  scaling) are the largest any micro-batch saw. With the single-document fast path
  (`fast_path_enabled`), each micro-batch chooses its branch on its own."""
  cfg, mcfg = setup.cfg, setup.model_cfg
  accum = int(cfg.train.grad_accum_steps)
  grad_fn = jax.value_and_grad(
      lambda ph, b: loss_fn(ph[0], b, mcfg, cfg.train, cfg.train.z_loss, state.masks, ph[1]),
      has_aux=True)
  if fast_path_enabled(setup):
    grad_fn = single_document_cond(grad_fn)
  differentiated = (state.params, state.fp8_history)
  if accum == 1:
    (_, aux), (grads, seen) = grad_fn(differentiated, batch)
    return grads, aux, seen
  # Rows (B/A, A) keep each device's rows on that device for every micro-batch.
  micro = jax.tree.map(
      lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)
  micro = jax.lax.with_sharding_constraint(
      micro, NamedSharding(setup.mesh, P(None, *setup.batch_sharding.spec)))

  def accumulate(carry, mb):
    (_, aux), (g, s) = grad_fn(differentiated, mb)
    grads, aux_sum, seen = carry
    return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, aux_sum, aux),
            jax.tree.map(jnp.maximum, seen, s)), None

  zeros = (jax.tree.map(jnp.zeros_like, state.params),
           {"loss": jnp.zeros((), jnp.float32), "z_loss": jnp.zeros((), jnp.float32)},
           jax.tree.map(jnp.zeros_like, state.fp8_history))
  (grads, aux, seen), _ = jax.lax.scan(accumulate, zeros, micro)
  grads, aux = jax.tree.map(lambda x: x / accum, (grads, aux))
  return grads, aux, seen


def fp8_ready(setup: Setup, state: TrainState, batch: dict) -> TrainState:
  """`state` with calibrated amax histories (for scripts that call the train step
  directly, as `growjax train` does before its first step); unchanged without delayed
  FP8 scaling or when they already hold observations."""
  if state_lib.fp8_calibrated(state):
    return state
  with jax.set_mesh(setup.mesh):
    return make_fp8_calibration(setup)(state, batch)


def make_fp8_calibration(setup: Setup, ramp: mask_ramp.Plan | None = None
                         ) -> Callable[[TrainState, dict], TrainState]:
  """`(state, batch) -> state` with every amax history holding what one current-scaling
  forward and backward pass over `batch` observes (params untouched): run once before
  the first delayed-scaling step of a fresh, grown or imported model, so that step
  scales exactly as current scaling would."""
  def calibrate(state: TrainState, batch: dict) -> TrainState:
    with sharding.activation_sharding(setup.mesh, setup.rules), fp8.calibrating():
      _, _, seen = _gradients(setup, state, model_batch(batch, setup.cfg))
    zero = jax.tree.map(jnp.zeros_like, state.fp8_history)
    return state.replace(fp8_history=fp8.push_history(zero, seen))

  shardings = state_shardings(setup, ramp)
  return jax.jit(calibrate, in_shardings=(shardings, setup.batch_sharding),
                 out_shardings=shardings, donate_argnums=0)


def state_shardings(setup: Setup, ramp: mask_ramp.Plan | None) -> TrainState:
  """The train state's shardings: with the ramp's masks (replicated) when there is one,
  and delayed FP8 scaling's amax histories (replicated) when the model uses them."""
  history = jax.tree.map(lambda a: a.sharding, state_lib.fp8_history_abstract(setup))
  shardings = setup.state_shardings.replace(fp8_history=history)
  if ramp is None:
    return shardings
  return shardings.replace(masks=ramp.shardings(setup.mesh))


def step_abstract_state(setup: Setup) -> TrainState:
  """The abstract state the train step takes (to lower or compile it without arrays):
  the model's, with delayed FP8 scaling's amax histories when the model uses them."""
  return setup.abstract_state.replace(fp8_history=state_lib.fp8_history_abstract(setup))


def abstract_state(setup: Setup, ramp: mask_ramp.Plan | None, step: int) -> TrainState:
  """The abstract state a checkpoint of this run at `step` holds: with the masks when
  `step` is inside the ramp. (Delayed FP8's amax histories, where its writer kept them,
  come back through `Checkpoints.restore(..., keep_fp8_history=True)` at their saved
  shapes, and `state.with_fp8_history` fits them to this run.)"""
  if ramp is None or not ramp.active(step):
    return setup.abstract_state
  return setup.abstract_state.replace(masks=ramp.abstract(setup.mesh))


def make_eval_step(setup: Setup, ramp: mask_ramp.Plan | None = None
                   ) -> Callable[..., jax.Array]:
  """`(params, batch) -> loss`; with `ramp`, `(params, batch, masks) -> loss`."""
  mcfg, cfg = setup.model_cfg, setup.cfg
  fast = fast_path_enabled(setup)

  def eval_fn(params, batch, masks=None):
    batch = model_batch(batch, cfg)
    with sharding.activation_sharding(setup.mesh, setup.rules):
      loss = lambda p, b: loss_fn(p, b, mcfg, cfg.train, 0.0, masks)[1]["loss"]
      return (single_document_cond(loss) if fast else loss)(params, batch)

  in_shardings = (setup.state_shardings.params, setup.batch_sharding)
  if ramp is not None:
    in_shardings += (ramp.shardings(setup.mesh),)
  return jax.jit(eval_fn, in_shardings=in_shardings,
                 out_shardings=sharding.replicated(setup.mesh))


@dataclasses.dataclass(frozen=True)
class HostBatches:
  """How a process's loaded rows become global batch arrays.

  `rows` are the global batch rows this process's devices hold (read off the
  batch sharding); the loader reads only those, and `to_global` hands each
  device exactly the rows its index in the sharding names, whatever the mesh
  and process layout.
  """
  sharding: NamedSharding
  global_batch_size: int
  rows: np.ndarray

  @classmethod
  def of(cls, batch_sharding: NamedSharding, global_batch_size: int) -> "HostBatches":
    return cls(batch_sharding, global_batch_size,
               sharding.process_rows(batch_sharding, global_batch_size))

  def to_global(self, batch: dict) -> dict:
    position = {int(r): i for i, r in enumerate(self.rows)}

    def arrays(v):
      v = np.asarray(v)
      if len(v) != len(self.rows):
        raise ValueError(f"got {len(v)} rows for the {len(self.rows)} this process holds.")

      def device_rows(index):
        wanted = range(*index[0].indices(self.global_batch_size))
        return v[[position[r] for r in wanted]][(slice(None), *index[1:])]

      return jax.make_array_from_callback((self.global_batch_size, *v.shape[1:]),
                                          self.sharding, device_rows)

    return {k: arrays(v) for k, v in batch.items()}


def to_global(batch: dict, batch_sharding: NamedSharding) -> dict:
  """A whole global batch (numpy, on every process) -> global arrays over the mesh."""
  n = len(next(iter(batch.values())))
  return HostBatches(batch_sharding, n, np.arange(n)).to_global(batch)


def restore_or_init(setup: Setup, checkpoints: ckpt_lib.Checkpoints, data_iter, writer
                    ) -> tuple[TrainState, dict]:
  """Latest own checkpoint, else `train.init_from` (e.g. a grown model), else fresh.

  The latest step is process 0's view, agreed by all. Each step is checked cheaply
  (`checkpoint.verify_step`) before it is restored; a damaged one is set aside
  (`<step>.damaged-<n>`) and the newest intact step resumed, unless
  `config.train.damaged_checkpoint='refuse'`. Existing checkpoints win over
  `train.init_from` (said in one line). Returns the state and the checkpoint's
  metadata ({} when fresh)."""
  cfg = setup.cfg
  mode = cfg.train.get("damaged_checkpoint", "fallback")
  if mode not in ("fallback", "refuse"):
    raise ValueError(f"config.train.damaged_checkpoint={mode!r} — choose 'fallback' or "
                     f"'refuse'")
  [latest] = distributed.agreed([_or_minus_one(checkpoints.latest_step())])
  while latest >= 0:
    step_dir = f"{checkpoints.directory}/{latest}"
    problem = checkpoints.verify(latest)
    if problem is None:
      meta = ckpt_lib.read_meta(checkpoints.directory, latest)
      _check_same_model(meta, setup, checkpoints.directory, latest)
      try:
        state, data_state, meta = checkpoints.restore(
            latest, abstract_state(setup, mask_ramp.restored(meta), latest),
            keep_fp8_history=True)
        state = with_fp8_history(setup, state)
        if int(to_host(state.step)) != latest:   # a step dir renamed or swapped
          problem = (step_dir, f"holds the state of step {int(to_host(state.step))}")
      except Exception as e:  # noqa: BLE001 - a restore failure of a checked step = damage
        problem = (step_dir, f"restore failed ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:160]})")
    [damaged] = distributed.agreed([int(problem is not None)])
    if not damaged:
      if data_state:
        data_iter.set_state(data_state)
      if cfg.train.init_from:
        writer.text(f"resuming {step_dir}; config.train.init_from={cfg.train.init_from} is "
                    f"ignored because this workdir already has checkpoints")
      else:
        writer.text(f"resumed from {step_dir}")
      return state, meta
    where, why = problem or (step_dir, "damaged on process 0")
    if mode == "refuse":
      raise ValueError(f"checkpoint step {latest} is damaged: {where} is {why} — move "
                       f"{step_dir} aside, or set config.train.damaged_checkpoint=fallback "
                       f"to resume from the newest intact step")
    if jax.process_index() == 0:
      moved = checkpoints.set_aside(latest)
    else:
      moved = f"{step_dir}.damaged-*"
    distributed.agreed([0])   # the rename is done before anyone lists again
    if jax.process_index() != 0:
      checkpoints.manager.reload()
    earlier = [s for s in checkpoints.complete_steps() if s < latest]
    [previous] = distributed.agreed([earlier[-1] if earlier else -1])
    writer.text(f"WARNING: checkpoint step {latest} is damaged ({where}: {why}); moved "
                f"aside to {moved}, resuming from "
                + (f"step {previous}" if previous >= 0 else "scratch"))
    latest = previous
  if cfg.train.init_from:
    directory, step = ckpt_lib.resolve(cfg.train.init_from, field="config.train.init_from")
    [step] = distributed.agreed([step])
    meta = ckpt_lib.read_meta(directory, step)
    if _model_identity(meta.get("model")) != _model_identity(
        dataclasses.asdict(setup.model_cfg)):
      raise ValueError(
          f"config.train.init_from={cfg.train.init_from!r} holds model {meta.get('model')}, "
          f"which differs from config.model {dataclasses.asdict(setup.model_cfg)}; grow it "
          f"with `growjax grow` to this config first.")
    ramp = mask_ramp.from_grown(meta, step, cfg.growth.get("mask_ramp_steps", 0),
                                f"config.train.init_from={cfg.train.init_from!r}")
    source = ckpt_lib.Checkpoints(directory, use_async=False)
    state, data_state, _ = source.restore(step, setup.abstract_state, keep_fp8_history=True)
    state = with_fp8_history(setup, state)
    source.close()
    if data_state:
      data_iter.set_state(data_state)
    writer.text(f"initialised from {directory}/{step} (step {int(to_host(state.step))})")
    # The grown checkpoint's FLOPs are the small stage's: kept apart so that
    # `growjax speedup` can check a grown run counts them.
    meta = dict(meta, small_stage_flops=float(meta.get("flops_seen", 0.0)))
    for key in (guard_lib.WINDOW_META, guard_lib.EVAL_META):   # another model's losses
      meta.pop(key, None)
    if ramp is not None:
      state = state.replace(masks=ramp.initial(setup.mesh, step))
      meta[mask_ramp.META_KEY] = ramp.to_meta()
      writer.text(f"MSG masks: new layers and units ramp in from 0 to 1 over steps "
                  f"{ramp.start}..{ramp.end} (config.growth.mask_ramp_steps={ramp.ramp})")
    return state, meta
  return init_state(setup, jax.random.key(cfg.seed)), {}


# How the model is computed, not what it is: a run started from a checkpoint may change
# these (remat, attention kernel, FP8, the cuDNN packing the trainer resolves from 'auto').
COMPUTE_FIELDS = ("remat_policy", "remat_prevent_cse", "scan_unroll", "attention_impl",
                  "cudnn_packing", "max_segments", "matmul_precision", "fp8_scaling",
                  "fp8_amax_history", "fp8_swiglu_kernel", "single_document_fast_path")


def _model_identity(model: dict | None) -> dict | None:
  return None if model is None else {k: v for k, v in model.items()
                                     if k not in COMPUTE_FIELDS}


def _check_same_model(meta: dict, setup: Setup, directory: str, step: int) -> None:
  """A workdir whose checkpoints hold another model shape: one line naming both."""
  theirs, ours = meta.get("model") or {}, dataclasses.asdict(setup.model_cfg)
  keys = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
          "vocab_size")
  diff = [k for k in keys if k in theirs and k in ours and theirs[k] != ours[k]]
  if not diff:
    return

  def shape(m):
    return ", ".join(f"{k}={m[k]}" for k in diff)

  raise ValueError(f"{directory}/{step} holds another model ({shape(theirs)}) than "
                   f"config.model ({shape(ours)}) — use another --workdir, or start from it "
                   f"with config.train.init_from after `growjax grow`")


def _or_minus_one(step: int | None) -> int:
  return -1 if step is None else int(step)


class _Stalls:
  """Where the time since the last report went, apart from the steps themselves:
  evaluation and checkpoints (`eval_s`, `checkpoint_s`: stalls, left out of tokens/s),
  and within the training steps the host blocked on the device (`device_s`: waiting for
  a step's result, or in a step's dispatch held back until the previous step frees the
  donated state) and the host loading a batch and placing it on the devices (`data_s`).

  The device is drained first (`block_until_ready`) before a stall is timed, so queued
  training steps are not booked as a stall: the drain counts as device time."""

  KINDS = ("eval_s", "checkpoint_s", "device_s", "data_s")

  def __init__(self):
    for k in self.KINDS:
      setattr(self, k, 0.0)

  def add(self, kind: str, seconds: float) -> None:
    setattr(self, kind, getattr(self, kind) + seconds)

  def timed(self, kind: str, state, fn):
    t0 = time.perf_counter()
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    out = fn()
    self.add("device_s", t1 - t0)
    self.add(kind, time.perf_counter() - t1)
    return out

  def take(self) -> dict[str, float]:
    out = {k: getattr(self, k) for k in self.KINDS}
    self.__init__()
    return out


class _Accounting:
  """FLOPs, MFU (both conventions), tokens/s without stalls, and the progress line."""

  def __init__(self, setup: Setup, start_step: int, restored_meta: dict):
    cfg = setup.cfg
    self.setup, self.start_step = setup, start_step
    self.flops_per_token = setup.model_cfg.flops_per_token(cfg.data.seq_len)
    self.causal_flops_per_token = setup.model_cfg.flops_per_token(cfg.data.seq_len,
                                                                  causal=True)
    self.peak = metrics_lib.peak_tflops(setup.mesh.devices.flat[0],
                                        cfg.metrics.peak_tflops_per_chip)
    # Training FLOPs of the whole run so far, a grown model's small stage included
    # (carried in checkpoint metadata), so loss-vs-compute curves compare fairly.
    self.base_flops = float(restored_meta.get("flops_seen", 0.0))
    self.throughput = metrics_lib.Throughput(start_step, cfg.train.steps)
    self.stalls = _Stalls()
    self._last_report_step = start_step

  def flops_seen(self, step: int) -> float:
    return self.base_flops + ((step - self.start_step) * self.setup.tokens_per_step *
                              self.flops_per_token)

  def values(self, step: int, device_metrics: dict, eval_loss: float | None
             ) -> tuple[dict, float]:
    t0 = time.perf_counter()
    values = {k: float(v) for k, v in to_host(device_metrics).items()}
    self.stalls.add("device_s", time.perf_counter() - t0)
    spent = self.stalls.take()
    eval_s, checkpoint_s = spent["eval_s"], spent["checkpoint_s"]
    tokens = self.setup.tokens_per_step
    tps, eta = self.throughput.update(step, tokens, eval_s + checkpoint_s)
    steps, self._last_report_step = step - self._last_report_step, step
    chips = self.setup.mesh.size
    values.update(tokens_per_second=tps or None, eval_loss=eval_loss,
                  tokens_seen=step * tokens, flops=self.flops_seen(step),
                  mfu=metrics_lib.mfu(self.flops_per_token, tps, chips, self.peak),
                  mfu_causal=metrics_lib.mfu(self.causal_flops_per_token, tps, chips,
                                             self.peak),
                  eval_s=eval_s, checkpoint_s=checkpoint_s)
    if tps and steps > 0:
      values.update(metrics_lib.step_breakdown(tokens / tps, spent["device_s"] / steps,
                                               spent["data_s"] / steps))
    return values, eta


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
          stop_after_steps: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) a training run; returns the logged train / eval losses by step
  (`loss`, `eval_loss`) and `stopped_at`: the step it stopped early at, or None.

  `stop_after_steps` stops like a preemption after that many steps of this call
  (used by tests and by multi-stage runs). Metrics and checkpoints in flight are
  flushed however the run ends.
  """
  cfg = attention_choice.choose(cfg, devices)
  setup = build(cfg, devices)
  config_lib.validate_data(cfg)
  tc = cfg.train
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                    tensorboard=cfg.metrics.tensorboard)
  checkpoints = ckpt_lib.Checkpoints(str(epath.Path(workdir) / "checkpoints"),
                                     save_every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                                     use_async=tc.async_checkpointing)
  try:
    loop = _Loop(setup, writer, checkpoints, stop_after_steps)
    history = loop.run()
    # --- issue 13: what the trained model writes (config.train.final_sample_tokens > 0)
    if tc.get("final_sample_tokens", 0) and history.get("stopped_at") is None:
      from growjax import sample
      sample.final_sample(setup, loop.state.params, writer)
    # --- end issue 13
    return history
  finally:
    checkpoints.wait()
    checkpoints.close()
    writer.close()


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


class BadStepsError(FloatingPointError):
  """The run stops (exit 1) on a model it cannot trust: `config.train.max_bad_steps`
  consecutive non-finite steps, the run's end inside such a streak, or a loss spike that
  comes back after every rollback. Names the newest good checkpoint."""


MAX_ROLLBACKS = 3   # rollbacks to one checkpoint before a recurring spike stops the run


def _all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


class _Loop:
  """One call of `train`: restore, then step, report, evaluate and save until done.

  Bad numbers (`growjax.guard` decides): a step whose loss or gradient norm is not
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
    self.account = _Accounting(setup, self.step, restored_meta)
    self.history: dict[str, Any] = {"loss": {}, "eval_loss": {}, "stopped_at": None,
                                    "skipped": [], "rollbacks": []}
    self.bad_steps_total = 0
    self.guard = guard_lib.Guard(setup.cfg.train, self.step, restored_meta,
                                 resumed_checkpoint=self.step in checkpoints.complete_steps())
    self.checkpoints.mark_good(self.guard.good_step)
    self.rollbacks_to: dict[int, int] = {}   # checkpoint step -> rollbacks to it
    self.params_finite = jax.jit(_all_finite, out_shardings=sharding.replicated(setup.mesh))
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
                                                 eta))

  def evaluate(self) -> float:
    # Queue every eval batch before reading any: one host sync, not one per batch.
    if self.state.masks is not None:
      return float(np.mean(to_host([self.masked_eval_step(self.state.params, b,
                                                          self.state.masks)
                                    for b in self.eval_data])))
    return float(np.mean(to_host([self.eval_step(self.state.params, b)
                                  for b in self.eval_data])))

  def should_stop(self) -> bool:
    """SIGTERM / preemption (agreed by all processes), or `stop_after_steps` reached.
    `reached_preemption` is asked at every step, as JAX's sync protocol needs."""
    preempted = self.checkpoints.reached_preemption(self.step)
    return self.signal.event.is_set() or preempted or (
        self.stop_after_steps is not None and
        self.step - self.start_step >= self.stop_after_steps)

  def save(self, force: bool) -> str | None:
    """Saves the model of this step when it is due (or `force`) and trusted: its own
    step's numbers are read first. Returns None when no save was due, else 'saved',
    'not saved' (an untrusted model) or 'rolled back' (that read found a spike)."""
    if not (force or self.checkpoints.manager.should_save(self.step)):
      return None
    if self.last is not None and self.last[0] == self.step:
      last, self.last = self.last, None
      if self.check_numbers(*last):
        return "rolled back"
    why_not = self.guard.why_not_save(self.step,
                                      bool(to_host(self.params_finite(self.state.params))))
    if why_not is not None:
      if self.step == self.setup.cfg.train.steps and self.guard.in_streak:
        self.stop_bad(f"the run ended inside {self.guard.bad_in_a_row} NaN/Inf steps in a "
                      f"row (steps {self.guard.streak_start}..{self.step})",
                      self.guard.first_bad_of_streak())
      if self.step == self.setup.cfg.train.steps:
        self.stop_bad(f"the run's final model (step {self.step}) is untrusted: {why_not}",
                      self.step)
      self.writer.text(f"not saving step {self.step}: {why_not}; the newest good "
                       f"checkpoint is {self._good_text()}")
      return "not saved"
    meta = dict(self.meta, flops_seen=self.account.flops_seen(self.step),
                **self.guard.to_meta())
    self.account.stalls.timed("checkpoint_s", self.state, lambda: self.checkpoints.save(
        self.step, self.state, self.data_iter.get_state(), meta, force=force))
    self.guard.saved(self.step)
    faults.maybe_kill("mid_save")
    return "saved"

  def _good_text(self) -> str:
    good = self.guard.good_step
    return "none yet" if good is None else f"step {good}"

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
    self.state, step_metrics = step_fn(self.state, global_batch)
    # After the first (compiling) call, a dispatch returns at once unless the runtime
    # holds it back for the device (on GPU, donating a state the previous step still
    # uses): that wait is device time.
    self.account.stalls.add("data_s", t1 - t0)
    if step_fn in self.compiled:
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

  def check_numbers(self, step: int, step_metrics: dict, _batch, spike_guard=True) -> bool:
    """Reads `step`'s skipped flag and loss into the guard: stops the run after
    max_bad_steps NaN/Inf steps in a row, rolls back on a spike. True when it rolled
    back to a checkpoint."""
    t0 = time.perf_counter()   # the host waits here for the step's result
    skipped, loss = to_host((step_metrics["skipped"], step_metrics["loss"]))
    self.account.stalls.add("device_s", time.perf_counter() - t0)
    if float(skipped):
      self.bad_steps_total += 1
      self.history["skipped"].append(step)
    try:
      spike = self.guard.observe(step, bool(float(skipped)), float(loss), spike_guard)
    except guard_lib.BadStreak as e:
      self.stop_bad(e.why, e.first_bad)
    self.checkpoints.mark_good(self.guard.good_step)   # kept through rotation
    return spike is not None and self.roll_back(step, spike)

  def stop_bad(self, why: str, first_bad: int):
    """Sets aside the checkpoints of a model known bad and stops, naming the newest good
    checkpoint (or saying the rerun starts again from the beginning)."""
    moved = self.set_aside_from(first_bad)
    good = self.guard.good_step
    aside = (f"checkpoints {', '.join(map(str, moved))} (the model of step {first_bad} on) "
             f"set aside as <step>.bad-<n>; " if moved else "")
    where = (f"resume from the last good checkpoint, step {good} in "
             f"{self.checkpoints.directory}" if good is not None else
             f"start again from the beginning (no checkpoint before step {first_bad})")
    raise BadStepsError(f"{why}: {aside}lower config.optimizer.peak_lr and rerun to {where}")

  def set_aside_from(self, first_bad: int) -> list[int]:
    """Renames every checkpoint from `first_bad` on to `<step>.bad-<n>` (process 0;
    never deleted), so no rerun or rollback resumes a model known bad."""
    self.checkpoints.wait()
    bad = [s for s in self.checkpoints.complete_steps() if s >= first_bad]
    if jax.process_index() == 0:
      for s in bad:
        self.checkpoints.set_aside(s, "bad")
    distributed.agreed([0])   # renamed before anyone lists again
    if jax.process_index() != 0:
      self.checkpoints.manager.reload()
    remaining = [s for s in self.checkpoints.complete_steps() if s < first_bad]
    [newest] = distributed.agreed([remaining[-1] if remaining else -1])
    self.guard.forget_from(first_bad, [newest] if newest >= 0 else [])
    self.checkpoints.mark_good(self.guard.good_step)
    return bad

  def _arm_fp8_calibration(self) -> None:
    """Delayed FP8 scaling from zero histories (a fresh, grown or imported model, a
    checkpoint without them): one current-scaling pass over the next batch fills them
    before the next step (growjax.fp8)."""
    self.fp8_calibration = None if state_lib.fp8_calibrated(self.state) else (
        make_fp8_calibration(self.setup, self.ramp if self.state.masks is not None else None))

  def roll_back(self, step: int, spike: guard_lib.Spike) -> bool:
    """Restores the newest good checkpoint in-process (those of the spiked model set
    aside); the batches after it up to and including `step`'s are skipped (one
    dispatched after `step` is fed again). A spike with no checkpoint before it counts
    as a bad step; one that comes back after MAX_ROLLBACKS rollbacks stops the run."""
    moved = self.set_aside_from(spike.first_bad)
    latest = self.guard.good_step
    if latest is None:
      self.writer.text(f"{spike.why}, but no checkpoint before step {spike.first_bad} to "
                       f"roll back to: counted as a bad step, nothing saved until the loss "
                       f"is back")
      try:
        self.guard.unrollable(step)
      except guard_lib.BadStreak as e:
        self.stop_bad(e.why, e.first_bad)
      return False
    self.rollbacks_to[latest] = self.rollbacks_to.get(latest, 0) + 1
    if self.rollbacks_to[latest] > MAX_ROLLBACKS:
      self.stop_bad(f"{spike.why}, after {MAX_ROLLBACKS} rollbacks to step {latest}: the "
                    f"loss keeps spiking", spike.first_bad)
    self.state, _, meta = self.checkpoints.restore(
        latest, abstract_state(self.setup, self.ramp, latest), keep_fp8_history=True)
    self.state = with_fp8_history(self.setup, self.state)
    self._arm_fp8_calibration()   # a checkpoint written before delayed FP8 holds none
    self.guard.rolled_back(latest, meta)
    self.replay_batch = self.last[2] if self.last is not None else None
    self.last = None
    self.step = int(to_host(self.state.step))
    self.history["rollbacks"].append((step, latest))
    aside = (f"; checkpoints {', '.join(map(str, moved))} set aside as <step>.bad-<n>"
             if moved else "")
    self.writer.text(f"{spike.why}: rolled back to checkpoint step {latest}, skipping the "
                     f"{step - latest} batches of steps {latest + 1}..{step}{aside}")
    return True

  def run(self) -> dict[str, Any]:
    setup, tc = self.setup, self.setup.cfg.train
    if self.step >= tc.steps:
      self.writer.text(f"nothing to do: checkpoint step {self.step} >= "
                       f"config.train.steps={tc.steps}")
    self.writer.text(
        f"model {setup.model_cfg.num_params() / 1e6:.1f}M params, "
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
