"""`growjax sweep`: when to grow and by how much, measured on the user's own data.

For one target model (a run config's model, steps, batch and data) the sweep runs one
scratch run and a grid of grow runs over the growth timing d (small-stage steps, or
tokens), the growth factor g (the small model is the target with num_layers / g
layers) and optionally the depth operator (config.growth.method). Every grow run
spends the scratch run's FLOPs: its large stage gets the steps that the small stage
left of the budget (as configs/repro/operators.py computes them). Then it reports the
FLOPs each grow run saved to reach the scratch run's final loss (growth.speedup), the
best d for each g and the best g, fits the paper's law for d to the measured optimum
(growth.law), recommends d and g for a budget, and writes `sweep_summary.json` and
three PNG plots into the sweep's workdir.

Layout: WORKDIR/scratch, WORKDIR/d{D}_g{G}_{METHOD} (D in small-stage steps), each a
normal run of `growth.stages.run`, so each resumes as every run does; a rerun of the
sweep skips finished runs, continues an unfinished one, and analyses again.
`sweep_plan.json` records the target so that a rerun with another config is refused.
`--only` picks runs of the grid (a d sweep at one g and a g sweep at one d need not be a
whole grid); `--jobs N` trains N runs at a time on one host, each a child process with
its log in WORKDIR/logs/ and 1/N of the accelerator's memory: a small target leaves most
of a GPU idle, and the sweep is made of small targets. `--jobs auto` takes N from the
target's compiled train step and the device's memory limit.

This module orchestrates and analyses; training is `stages.run`'s, the speedup
arithmetic `speedup`'s and the fit `law`'s. It adds no new training behaviour.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np
from etils import epath

from growjax.growth import law as law_lib
from growjax.growth import speedup
from growjax.growth import timing

PLAN_FILE = "sweep_plan.json"
SUMMARY_FILE = "sweep_summary.json"
PLOTS = ("loss_vs_flops.png", "saving_vs_d.png", "saving_vs_g.png")
D_UNITS = ("steps", "tokens")
DEFAULT_G = (2, 4)


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of the grid: the scratch run (g = None) or a grow run."""
  name: str
  g: int | None
  method: str | None
  d_steps: int              # small-stage steps (0 for scratch)
  d_tokens: int             # tokens on the small model
  small_layers: int | None
  steps: int                # config.train.steps: small + large stage for a grow run
  large_steps: int          # steps of the target model
  flops: float              # total training FLOPs, small stage included
  small_flops: float

  @property
  def is_scratch(self) -> bool:
    return self.g is None


# ------------------------------------------------------------------------------- plan


def _model(cfg_model: ml_collections.ConfigDict):
  from growjax.model import ModelConfig
  return ModelConfig.from_config(cfg_model)


def _tokens_per_step(cfg, small: bool = False) -> int:
  batch = cfg.train.global_batch_size
  if small and cfg.growth.small_global_batch_size:
    batch = cfg.growth.small_global_batch_size
  return int(batch) * int(cfg.data.seq_len)


def target_params(cfg: ml_collections.ConfigDict) -> float:
  """N of the law: the target model's parameters (as `growjax plan` counts them)."""
  return float(_model(cfg.model).num_params())


def scratch_flops(cfg: ml_collections.ConfigDict) -> float:
  return (cfg.train.steps * _tokens_per_step(cfg) *
          _model(cfg.model).flops_per_token(cfg.data.seq_len))


def parse_d(values: Sequence[str], unit: str, cfg: ml_collections.ConfigDict
            ) -> list[int]:
  """--d values -> small-stage steps (sorted, unique). Tokens round to whole steps of
  the small stage's batch."""
  if unit not in D_UNITS:
    raise ValueError(f"--d_unit={unit!r} is not one of {', '.join(D_UNITS)} — give "
                     f"--d_unit=steps or --d_unit=tokens")
  per_step = _tokens_per_step(cfg, small=True)
  out = set()
  for v in values:
    try:
      x = float(v)
    except ValueError:
      raise ValueError(f"--d entry {v!r} is not a number — give small-stage {unit}, e.g. "
                       f"--d=50,150,300") from None
    steps = x if unit == "steps" else x / per_step
    if unit == "steps" and x != int(x):
      raise ValueError(f"--d entry {v!r} is not a whole number of steps — give whole "
                       f"steps, or --d_unit=tokens")
    if round(steps) < 1:
      raise ValueError(f"--d entry {v!r} ({unit}) is below one small-stage step "
                       f"({per_step} tokens) — give d >= 1 step")
    out.add(int(round(steps)))
  if not out:
    raise ValueError("--d is empty — give growth timings, e.g. --d=50,150,300")
  return sorted(out)


def parse_g(values: Sequence[str] | None, num_layers: int) -> list[int]:
  """--g values (default: those of 2 and 4 that divide num_layers), each dividing it."""
  divisors = [k for k in range(2, num_layers + 1) if num_layers % k == 0]
  if not values:
    out = [g for g in DEFAULT_G if num_layers % g == 0]
    if not out:
      raise ValueError(f"config.model.num_layers={num_layers} is divisible by neither 2 nor "
                       f"4 — give --g with factors that divide it"
                       f"{' (' + ', '.join(map(str, divisors)) + ')' if divisors else ''}")
    return out
  out = set()
  for v in values:
    try:
      g = int(v)
    except ValueError:
      raise ValueError(f"--g entry {v!r} is not an integer — give growth factors, e.g. "
                       f"--g=2,4") from None
    if g < 2 or num_layers % g:
      raise ValueError(f"--g={g} does not divide config.model.num_layers={num_layers} into a "
                       f"smaller model — give factors >= 2 that divide it: "
                       f"{', '.join(map(str, divisors)) or 'none (num_layers is 1)'}")
    out.add(g)
  return sorted(out)


def run_config(cfg: ml_collections.ConfigDict, run: SweepRun) -> ml_collections.ConfigDict:
  """The run config of one run of the grid (a whole grow run for a grow run)."""
  c = cfg.copy_and_resolve_references()
  c.growth.enabled = not run.is_scratch
  c.train.steps = run.steps
  if run.is_scratch:
    return c
  small = cfg.model.copy_and_resolve_references()
  small.num_layers = run.small_layers
  c.growth.small_model = small
  c.growth.small_steps = run.d_steps
  c.growth.method = run.method
  if "events" in c.growth:    # one growth per run: the grid, not a gradual schedule
    c.growth.events = ""
  return c


def plan(cfg: ml_collections.ConfigDict, d_steps: Sequence[int], gs: Sequence[int],
         methods: Sequence[str]) -> list[SweepRun]:
  """The scratch run and every grow run at equal FLOPs; refuses, before any compute, a d
  whose small stage alone spends the scratch run's budget."""
  if not cfg.train.eval_every or cfg.train.eval_every <= 0:
    raise ValueError(f"config.train.eval_every={cfg.train.eval_every}: the sweep compares "
                     f"evaluation losses — set config.train.eval_every > 0")
  large = _model(cfg.model)
  seq = int(cfg.data.seq_len)
  tps_large, tps_small = _tokens_per_step(cfg), _tokens_per_step(cfg, small=True)
  step_flops = tps_large * large.flops_per_token(seq)
  budget = cfg.train.steps * step_flops
  runs = [SweepRun("scratch", None, None, 0, 0, None, int(cfg.train.steps),
                   int(cfg.train.steps), budget, 0.0)]
  for method in methods:
    for g in gs:
      small_layers = large.num_layers // g
      small = dataclasses.replace(large, num_layers=small_layers)
      small_step_flops = tps_small * small.flops_per_token(seq)
      for d in d_steps:
        small_flops = d * small_step_flops
        large_steps = math.floor((budget - small_flops) / step_flops)
        if large_steps < 1:
          max_d = math.floor((budget - step_flops) / small_step_flops)
          while max_d > 0 and math.floor((budget - max_d * small_step_flops) /
                                         step_flops) < 1:     # float rounding at the edge
            max_d -= 1
          raise ValueError(
              f"--d={d} steps ({d * tps_small} tokens) at g={g}: the small stage "
              f"({small_layers} layers, {small_flops:.4g} FLOPs) leaves no step of the "
              f"scratch run's budget "
              f"({budget:.4g} FLOPs, config.train.steps={cfg.train.steps}) for the target "
              f"model — give d <= {max_d} steps at g={g}")
        runs.append(SweepRun(
            f"d{d}_g{g}_{method}", g, method, d, d * tps_small, small_layers, d + large_steps,
            large_steps, small_flops + large_steps * step_flops, small_flops))
  return runs


def check(cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun], num_devices: int) -> None:
  """Every run's config as its stages will check it (model, mesh, growth), before any
  compute; an error names the run."""
  from growjax import config as config_lib
  from growjax.growth import stages
  for run in runs:
    c = run_config(cfg, run)
    try:
      if run.is_scratch:
        config_lib.validate(c, num_devices)
        continue
      config_lib.validate(c, num_devices)
      config_lib.validate(stages.small_stage_config(c), num_devices)
      stages.check_schedule(c)
    except ValueError as e:
      raise ValueError(f"sweep run {run.name}: {e}") from None


def describe_plan(cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun]) -> str:
  """The grid, each run's step counts and FLOPs (the `--dry_run` output)."""
  large = _model(cfg.model)
  budget = runs[0].flops
  lines = [f"sweep: target {large.num_layers} layers x {large.embed_dim} "
           f"(N = {target_params(cfg):.4g} params), {cfg.train.steps} steps of "
           f"{_tokens_per_step(cfg)} tokens, budget C = {budget:.4g} FLOPs; "
           f"{len(runs)} runs",
           f"  {'run':<22}{'g':>3}{'small':>7}{'d steps':>9}{'d tokens':>11}"
           f"{'large steps':>13}{'steps':>8}{'FLOPs':>11}{'/ scratch':>11}"]
  for r in runs:
    lines.append(
        f"  {r.name:<22}{r.g or '-':>3}{r.small_layers or '-':>7}{r.d_steps or '-':>9}"
        f"{r.d_tokens or '-':>11}{r.large_steps:>13}{r.steps:>8}{r.flops:>11.4g}"
        f"{r.flops / budget:>11.4f}")
  total_flops = sum(r.flops for r in runs)
  total_steps = sum(r.steps for r in runs)
  lines.append(f"  total: {total_steps} steps ({sum(r.d_steps for r in runs)} small-stage, "
               f"{sum(r.large_steps for r in runs)} target-model), {total_flops:.4g} FLOPs "
               f"({total_flops / budget:.3g} x the scratch run)")
  return "\n".join(lines)


# --------------------------------------------------------------------------- running


def _signature(cfg: ml_collections.ConfigDict) -> dict:
  """What makes two sweeps comparable: the target model, steps, batch and data."""
  return {"model": dataclasses.asdict(_model(cfg.model)), "steps": int(cfg.train.steps),
          "global_batch_size": int(cfg.train.global_batch_size),
          "seq_len": int(cfg.data.seq_len), "seed": int(cfg.seed),
          "data": json.loads(cfg.data.to_json_best_effort())}


def _record_plan(workdir: str, cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun]
                 ) -> None:
  """Writes sweep_plan.json; refuses a workdir that holds a sweep of another target."""
  path = epath.Path(workdir) / PLAN_FILE
  sig = _signature(cfg)
  known = {}
  if path.exists():
    old = json.loads(path.read_text())
    if old.get("target") != sig:
      diff = sorted(k for k in sig if old.get("target", {}).get(k) != sig[k])
      raise ValueError(
          f"--workdir={workdir} holds a sweep of another target ({', '.join(diff)} differ "
          f"from {PLAN_FILE}) — give a new --workdir, or the config that sweep ran")
    known = {r["name"]: r for r in old.get("runs", [])}
  known.update({r.name: dataclasses.asdict(r) for r in runs})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"target": sig, "runs": list(known.values())}, indent=1))


def run_dir(workdir: str, run: SweepRun) -> str:
  return str(epath.Path(workdir) / run.name)


def is_done(workdir: str, run: SweepRun) -> bool:
  """A run is done when its (target-model) checkpoints hold its last step."""
  from growjax import checkpoint as ckpt_lib
  sub = "checkpoints" if run.is_scratch else "large/checkpoints"
  return ckpt_lib.latest_complete_step(str(epath.Path(run_dir(workdir, run)) / sub)) == run.steps


def _stopped(history: dict) -> bool:
  parts = [history] if "stopped_at" in history else list(history.values())
  return not parts or any(p.get("stopped_at") is not None for p in parts)


def _what(run: SweepRun, cfg) -> str:
  if run.is_scratch:
    return f"from scratch, {run.steps} steps"
  return (f"{run.method} x{run.g}: {run.small_layers} layers for {run.d_steps} steps, then "
          f"{cfg.model.num_layers} layers to step {run.steps}")


def execute(cfg: ml_collections.ConfigDict, workdir: str, runs: Sequence[SweepRun],
            log: Callable[[str], None] = print,
            train_fn: Callable | None = None) -> bool:
  """Runs every unfinished run in order (each resumes where it stopped); True when the
  whole grid is done, False when a run stopped early (preemption): rerun to resume."""
  from growjax import distributed
  from growjax.growth import stages
  train_fn = train_fn or stages.run
  done = [bool(v) for v in distributed.agreed([int(is_done(workdir, r)) for r in runs])]
  left = sum(r.flops for r, d in zip(runs, done) if not d)
  log(f"== sweep: {len(runs)} runs, {sum(done)} done; {left:.4g} FLOPs to go -> {workdir}")
  spent_s, spent_flops = 0.0, 0.0
  for i, (run, finished) in enumerate(zip(runs, done), 1):
    head = f"== sweep run {i}/{len(runs)}: {run.name}"
    if finished:
      log(f"{head}: done, skipped")
      continue
    log(f"{head}: {_what(run, cfg)} ({run.flops:.4g} FLOPs) -> {run_dir(workdir, run)}")
    t0 = time.perf_counter()
    history = train_fn(run_config(cfg, run), run_dir(workdir, run))
    if _stopped(history):
      log(f"== sweep stopped in run {i}/{len(runs)} ({run.name}): rerun the same command "
          f"to resume it")
      return False
    spent_s += time.perf_counter() - t0
    spent_flops += run.flops
    left -= run.flops
    eta = f"sweep ETA {_duration(left * spent_s / spent_flops)}" if left > 0 else "grid done"
    log(f"== sweep run {i}/{len(runs)} done in {_duration(time.perf_counter() - t0)}; "
        f"{eta} ({left:.4g} FLOPs left)")
  return True


class JobsFailed(RuntimeError):
  """Grid runs of `--jobs` exited with an error; the CLI prints `one_line` alone."""

  @property
  def one_line(self) -> str:
    return str(self)


def select(runs: Sequence[SweepRun], names: Sequence[str]) -> list[SweepRun]:
  """The named runs of the grid (`--only`), the scratch run always first: a d sweep and a g
  sweep need not be a whole d x g grid."""
  known = {r.name: r for r in runs}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"--only={','.join(names)}: {', '.join(unknown)} not in the grid — "
                     f"choose from {', '.join(known)}")
  return [runs[0]] + [r for r in runs[1:] if r.name in names]


def job_log(workdir: str, run: SweepRun) -> epath.Path:
  return epath.Path(workdir) / "logs" / f"{run.name}.log"


def _last_line(path: epath.Path, width: int = 110) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [l.strip() for l in f.read().splitlines() if l.strip()]
  except OSError:
    return ""
  return lines[-1][:width] if lines else ""


AUTO = "auto"


def parse_jobs(value: int | str) -> int | str:
  """--jobs: a whole number >= 1, or 'auto'."""
  if str(value).strip().lower() == AUTO:
    return AUTO
  try:
    n = int(str(value))
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"--jobs={value} must be a whole number >= 1 or auto — e.g. --jobs=3, "
                     f"or --jobs=auto for as many as fit the accelerator's memory")
  return n


def jobs_that_fit(need_bytes: int, limit_bytes: int, most: int) -> int:
  """Runs side by side on one device: each job gets limit/N of it and needs `need_bytes`
  under attention_choice's headroom; at least 1, at most `most`."""
  from growjax.train import memory_probe
  return max(1, min(most, int(memory_probe.HEADROOM * limit_bytes // max(need_bytes, 1))))


def auto_jobs(cfg: ml_collections.ConfigDict, most: int,
              log: Callable[[str], None] = print) -> tuple[int, bool]:
  """--jobs auto: compiles the target model's train step (the grid's largest stage) and
  divides the device's memory limit by what it needs (`compiled.memory_analysis()`).
  Returns (jobs, whether to run them as child processes): (1, False) where the backend
  reports no limit (CPU), which trains in this process."""
  import jax
  from growjax.train import attention_choice, memory_probe
  from growjax.train import state as state_lib
  c = cfg.copy_and_resolve_references()
  if c.model.cudnn_packing == "auto":   # each job chooses its own; size the smaller layout
    c.model.cudnn_packing = "mask"
  setup = state_lib.build(c)
  limit = memory_probe.device_limit(setup.mesh.devices.flat)
  if limit is None:
    log(f"== sweep: --jobs auto: the {jax.default_backend()} backend reports no memory "
        f"limit — one run at a time")
    return 1, False
  need = memory_probe.train_step_bytes(setup)
  n = jobs_that_fit(need, limit, most)
  gib = 2 ** 30
  log(f"== sweep: --jobs auto: the target's train step needs {need / gib:.1f} GiB per "
      f"device of {limit / gib:.1f} GiB ({attention_choice.memory_fraction()}): {n} at a time")
  return n, True


def _stop_with_parent() -> None:
  """A --jobs child gets SIGTERM (save a checkpoint, stop) when its sweep dies, even by
  SIGKILL, so no orphan keeps training a run that a rerun would start again (Linux)."""
  if not sys.platform.startswith("linux"):
    return
  import ctypes
  parent = os.getppid()
  ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
  if os.getppid() != parent:                   # the sweep died before prctl took effect
    raise SystemExit("growjax sweep --job: the sweep that started this job has exited")


def execute_parallel(cfg: ml_collections.ConfigDict, workdir: str, runs: Sequence[SweepRun],
                     jobs: int, child_argv: Sequence[str],
                     log: Callable[[str], None] = print, poll_s: float = 2.0,
                     status_every_s: float = 60.0, env: dict | None = None) -> bool:
  """Runs the unfinished runs `jobs` at a time, each a child `growjax sweep --job=NAME`
  (`child_argv` + that flag) with its output in WORKDIR/logs/NAME.log and an equal share
  of the accelerator's memory (XLA_PYTHON_CLIENT_MEM_FRACTION / jobs): a small target
  does not fill a GPU, so side by side the grid takes a fraction of its sequential time.
  SIGTERM or SIGINT is passed on to every child, which saves a checkpoint and exits; the
  sweep then waits for them and returns False (rerun to resume), like `execute`."""
  done = [is_done(workdir, r) for r in runs]
  todo = [r for r, d in zip(runs, done) if not d]
  left = sum(r.flops for r in todo)
  log(f"== sweep: {len(runs)} runs, {sum(done)} done; {left:.4g} FLOPs to go, {jobs} at a "
      f"time -> {workdir}")
  for r, d in zip(runs, done):
    if d:
      log(f"== sweep run {r.name}: done, skipped")
  env = dict(os.environ if env is None else env)
  fraction = float(env.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")) / jobs
  env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
  (epath.Path(workdir) / "logs").mkdir(parents=True, exist_ok=True)
  if todo:   # once here, not raced by every job (the jobs then find it prepared)
    from growjax.data import loader
    t0 = time.perf_counter()
    loader.open_datasets(cfg.data)
    log(f"== sweep: data ready for all jobs ({_duration(time.perf_counter() - t0)})")
  running: dict[str, tuple[subprocess.Popen, float, SweepRun]] = {}
  failed, stopped, stopping = [], [], []

  def on_signal(signum, _frame):
    if not stopping:
      log(f"== sweep: {signal.Signals(signum).name}: passing it on to {len(running)} "
          f"running job(s); each saves a checkpoint and stops")
    stopping.append(signum)
    for proc, _, _ in running.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
  t_start, finished_flops, last_status = time.perf_counter(), 0.0, time.perf_counter()
  try:
    while todo or running:
      while todo and len(running) < jobs and not stopping:
        run = todo.pop(0)
        path = job_log(workdir, run)
        with open(path, "a") as out:   # own session: a terminal's Ctrl-C reaches the
          proc = subprocess.Popen(     # sweep alone, which passes SIGTERM on
              [*child_argv, f"--job={run.name}"], stdout=out, stderr=subprocess.STDOUT,
              env=env, start_new_session=True)
        running[run.name] = (proc, time.perf_counter(), run)
        log(f"== sweep run {run.name}: started ({_what(run, cfg)}, {run.flops:.4g} FLOPs), "
            f"log {path}")
      if stopping and not running:
        break
      time.sleep(poll_s)
      for name, (proc, t0, run) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        del running[name]
        took = _duration(time.perf_counter() - t0)
        if is_done(workdir, run):
          finished_flops += run.flops
          left -= run.flops
          rate = finished_flops / (time.perf_counter() - t_start)
          eta = (f"sweep ETA {_duration(left / rate)}" if left > 0 and not stopping
                 else "grid done" if left <= 0 else "stopping")
          log(f"== sweep run {name} done in {took}; {eta} ({left:.4g} FLOPs left)")
        elif rc == 0 or stopping:
          stopped.append(name)
          log(f"== sweep run {name} stopped after {took}: rerun the same command to resume it")
        else:
          failed.append(name)
          last = _last_line(job_log(workdir, run))
          hint = (f" — out of accelerator memory at 1/{jobs} of it: lower --jobs, or set "
                  f"--config.model.remat_policy=full" if "RESOURCE_EXHAUSTED" in last else "")
          log(f"== sweep run {name} failed (exit {rc}) after {took}: {last}{hint}")
      if running and time.perf_counter() - last_status >= status_every_s:
        last_status = time.perf_counter()
        for name, (_, t0, run) in running.items():
          log(f"   {name} ({_duration(time.perf_counter() - t0)}): "
              f"{_last_line(job_log(workdir, run))}")
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  if failed:
    raise JobsFailed(f"sweep runs {', '.join(failed)} failed — their logs are in "
                     f"{epath.Path(workdir) / 'logs'}; fix the cause and rerun the same "
                     f"command (finished runs are skipped)")
  if stopped or stopping or todo:
    log(f"== sweep stopped ({len(stopped) + len(todo)} run(s) unfinished): rerun the same "
        f"command to resume")
    return False
  return True


def _duration(seconds: float) -> str:
  from growjax.train.metrics import format_duration
  return format_duration(seconds)


# -------------------------------------------------------------------------- analysis


def best_d(d_tokens: Sequence[float], savings: Sequence[float | None]
           ) -> dict | None:
  """The growth timing with the largest saving. With the best inside the grid and its two
  neighbours measured, the vertex of the parabola through the three (saving against
  log10 d) refines it; `at_edge` says the best is the grid's smallest or largest d (the
  optimum may lie beyond). None when no d reached the target."""
  pairs = sorted((float(d), s) for d, s in zip(d_tokens, savings))
  measured = [(d, s) for d, s in pairs if s is not None]
  if not measured:
    return None
  i = max(range(len(pairs)), key=lambda k: -math.inf if pairs[k][1] is None else pairs[k][1])
  d, s = pairs[i]
  out = {"d_tokens": d, "grid_d_tokens": d, "flops_saved": s, "how": "grid",
         "at_edge": len(pairs) > 1 and i in (0, len(pairs) - 1)}
  if 0 < i < len(pairs) - 1 and pairs[i - 1][1] is not None and pairs[i + 1][1] is not None:
    x = np.log10([pairs[i - 1][0], d, pairs[i + 1][0]])
    y = np.array([pairs[i - 1][1], s, pairs[i + 1][1]])
    curve, slope, _ = np.polyfit(x, y, 2)
    if curve < 0:
      vertex = float(np.clip(-slope / (2 * curve), x[0], x[2]))
      out.update(d_tokens=float(10 ** vertex), how="parabola")
  return out


def widen_d(cfg: ml_collections.ConfigDict, grid_steps: Sequence[int], best_steps: int,
            g: int, method: str) -> list[int]:
  """Two growth timings past the grid's edge where its best d sits, on the grid's own
  spacing (the ratio of the two outermost d on that side), that the budget allows: what
  to add to --d when the optimum may lie beyond."""
  steps = sorted(set(grid_steps))
  if len(steps) < 2:
    return []
  up = best_steps == steps[-1]
  ratio = steps[-1] / steps[-2] if up else steps[1] / steps[0]
  out, d = [], float(best_steps)
  for _ in range(2):
    d = d * ratio if up else d / ratio
    step = int(round(d))
    if step < 1 or step in steps or step in out:
      break
    try:
      plan(cfg, [step], [g], [method])
    except ValueError:
      break
    out.append(step)
  return sorted(out)


def _saving(scratch_curve, target: float, run_path: str) -> dict:
  s_flops, _ = scratch_curve
  s_reach = speedup.flops_to_reach(*scratch_curve, target)
  flops, loss = speedup.load_curve(run_path)
  reach = speedup.flops_to_reach(flops, loss, target)
  out = {"final_loss": float(loss[-1]), "best_loss": float(loss.min()),
         "total_flops": float(flops[-1]), "reached": reach is not None,
         "flops_to_target": reach, "flops_saved": None, "speedup": None}
  if reach is not None:
    out.update(flops_saved=1.0 - reach / s_reach, speedup=s_reach / reach - 1.0)
  return out


def _law_points(also: Sequence[str]) -> list[law_lib.Point]:
  points = []
  for other in also:
    path = epath.Path(other)
    path = path if path.name == SUMMARY_FILE else path / SUMMARY_FILE
    if not path.exists():
      raise ValueError(f"--also={other}: no {SUMMARY_FILE} there — give the workdir of a "
                       f"finished growjax sweep")
    p = json.loads(path.read_text()).get("law_point")
    if p:
      points.append(law_lib.Point(p["params"], p["flops"], p["d_tokens"]))
  return points


def analyse(cfg: ml_collections.ConfigDict, workdir: str, runs: Sequence[SweepRun],
            budget_flops: float | None = None, target_loss: float | None = None,
            also: Sequence[str] = ()) -> dict:
  """FLOPs saved by every grow run, the best d per g and the best g, the law fitted to
  the measured optimum (plus the --also sweeps' optima), and the recommendation."""
  scratch, grown = runs[0], [r for r in runs if not r.is_scratch]
  curve = speedup.load_curve(run_dir(workdir, scratch))
  target = float(curve[1][-1]) if target_loss is None else float(target_loss)
  s_reach = speedup.flops_to_reach(*curve, target)
  if s_reach is None:
    raise ValueError(f"the scratch run never reaches --target_loss={target:.4f} (its best is "
                     f"{curve[1].min():.4f}) — give a higher --target_loss")
  rows = []
  for r in runs:
    row = dataclasses.asdict(r)
    row.update(_saving(curve, target, run_dir(workdir, r)))
    rows.append(row)
  by_g: dict[str, dict[str, dict]] = {}
  for method in dict.fromkeys(r.method for r in grown):
    by_g[method] = {}
    for g in sorted({r.g for r in grown if r.method == method}):
      mine = [row for row in rows if row["g"] == g and row["method"] == method]
      best = best_d([row["d_tokens"] for row in mine], [row["flops_saved"] for row in mine])
      if best is not None:
        best["d_steps"] = next(row["d_steps"] for row in mine
                               if row["d_tokens"] == best["grid_d_tokens"])
        if best["at_edge"]:
          best["widen_d_steps"] = widen_d(cfg, sorted(row["d_steps"] for row in mine),
                                          best["d_steps"], g, method)
      by_g[method][str(g)] = best
  ranked = [(b["flops_saved"], m, int(g)) for m, per_g in by_g.items()
            for g, b in per_g.items() if b is not None]
  params, budget = target_params(cfg), scratch.flops
  summary = {
      "target": {"params": params, "budget_flops": budget, "num_layers": cfg.model.num_layers,
                 "embed_dim": cfg.model.embed_dim, "steps": cfg.train.steps,
                 "tokens_per_step": _tokens_per_step(cfg), "seq_len": cfg.data.seq_len},
      "target_loss": target, "target_is_scratch_final": target_loss is None,
      "scratch_flops_to_target": s_reach, "runs": rows,
      "best_d_per_g": by_g, "best": None, "law_point": None, "law": None,
      "paper_law": dict(law_lib.PAPER), "recommendation": None}
  points = list(_law_points(also))
  if ranked:
    saved, method, g = max(ranked)
    best = by_g[method][str(g)]
    summary["best"] = {"method": method, "g": g, **best}
    summary["law_point"] = {"params": params, "flops": budget, "d_tokens": best["d_tokens"],
                            "g": g, "method": method}
    points.insert(0, law_lib.Point(params, budget, best["d_tokens"]))
  if points:
    fit = law_lib.fit(points)
    summary["law"] = fit.as_dict()
    if ranked:
      summary["recommendation"] = recommend(cfg, fit, summary["best"]["g"],
                                            budget_flops or budget)
  return summary


def recommend(cfg: ml_collections.ConfigDict, fit: law_lib.Fit, g: int,
              budget_flops: float) -> dict:
  """d (tokens and this config's small-stage steps) from the fitted law at the budget,
  g the sweep's best; the paper's d at the same point beside it."""
  params = target_params(cfg)
  d = law_lib.predict_d(fit.coefficients, params, budget_flops)
  return {"budget_flops": budget_flops, "g": g, "d_tokens": d,
          "d_steps": max(1, round(d / _tokens_per_step(cfg, small=True))),
          "paper_d_tokens": law_lib.predict_d(law_lib.PAPER, params, budget_flops),
          "paper_range_warning": timing.fit_range_warning(params, budget_flops)}


def report(summary: dict) -> str:
  """The printed analysis."""
  t = summary["target"]
  whose = "the scratch run's final" if summary["target_is_scratch_final"] else "--target_loss"
  lines = [f"target loss {summary['target_loss']:.4f} ({whose}; scratch reaches it at "
           f"{summary['scratch_flops_to_target']:.4g} FLOPs)",
           f"  {'run':<22}{'d tokens':>11}{'final loss':>12}{'FLOPs to target':>17}"
           f"{'saved':>9}"]
  for r in summary["runs"]:
    saved = "-" if r["g"] is None else (
        f"{r['flops_saved']:.1%}" if r["flops_saved"] is not None else "never")
    reach = f"{r['flops_to_target']:.4g}" if r["flops_to_target"] is not None else "-"
    lines.append(f"  {r['name']:<22}{r['d_tokens'] or '-':>11}{r['final_loss']:>12.4f}"
                 f"{reach:>17}{saved:>9}")
  for method, per_g in summary["best_d_per_g"].items():
    for g, b in per_g.items():
      if b is None:
        lines.append(f"best d for g={g} ({method}): none reached the target loss")
        continue
      edge = ""
      if b["at_edge"]:
        more = b.get("widen_d_steps") or []
        grid = sorted({r["d_steps"] for r in summary["runs"]
                       if r["g"] == int(g) and r["method"] == method} | set(more))
        edge = (" — at the edge of the grid: the optimum may lie beyond, widen --d"
                + (f", e.g. --d={','.join(map(str, grid))}" if more else ""))
      refined = (f" (parabola through the grid: {b['d_tokens']:.4g} tokens)"
                 if b["how"] == "parabola" else "")
      lines.append(f"best d for g={g} ({method}): {b['d_steps']} steps = "
                   f"{b['grid_d_tokens']:.4g} tokens, {b['flops_saved']:.1%} saved"
                   f"{refined}{edge}")
  best = summary["best"]
  if best is None:
    lines.append("no grow run reached the scratch run's loss: no best g, no law fit — train "
                 "longer (config.train.steps) or try other --d / --g")
    return "\n".join(lines)
  lines.append(f"best g: {best['g']} ({best['method']}), {best['flops_saved']:.1%} of FLOPs "
               f"saved at d = {best['d_steps']} steps")
  fit = law_lib.Fit(**{**summary["law"], "fitted": tuple(summary["law"]["fitted"])})
  others = fit.num_points - 1
  lines.append(f"law point: N = {t['params']:.4g}, C = {t['budget_flops']:.4g}, d = "
               f"{best['d_tokens']:.4g} tokens (the best g's optimum)"
               f"{f'; with {others} point(s) of --also' if others else ''}")
  lines.append(law_lib.describe(fit))
  rec = summary["recommendation"]
  own = abs(rec["budget_flops"] / t["budget_flops"] - 1) < 1e-9
  lines.append(f"recommendation at C = {rec['budget_flops']:.4g} FLOPs"
               f"{' (this sweep' + chr(39) + 's budget)' if own else ''}: g = {rec['g']}, "
               f"d = {rec['d_tokens']:.4g} tokens = {rec['d_steps']} small-stage steps of "
               f"this config (the paper's law: d = {rec['paper_d_tokens']:.4g} tokens)")
  if rec["paper_range_warning"]:
    lines.append(f"  paper's law {rec['paper_range_warning']}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------ plots


def plot(summary: dict, workdir: str) -> list[str]:
  """Loss against FLOPs for every run, the saving against d and against g (PNG in the
  sweep's workdir); [] (and one printed line) without matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print(speedup.PLOT_SKIPPED)
    return []
  root = epath.Path(workdir)
  written = []

  def save(fig, name):
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    (root / name).write_bytes(png.getvalue())
    written.append(str(root / name))

  rows = summary["runs"]
  fig, ax = plt.subplots(figsize=(8, 5))
  for r in rows:
    flops, loss = speedup.load_curve(str(root / r["name"]))
    style = dict(color="black", linewidth=2.2) if r["g"] is None else dict(linewidth=1)
    ax.plot(flops, loss, label=r["name"], **style)
  ax.axhline(summary["target_loss"], linestyle="--", color="gray", linewidth=1,
             label=f"target {summary['target_loss']:.4f}")
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (grow runs include their small stage)")
  ax.set_ylabel("validation loss")
  ax.set_title("every run of the sweep at equal FLOPs")
  ax.legend(fontsize=7, ncol=2)
  save(fig, PLOTS[0])

  grown = [r for r in rows if not r["g"] is None]
  groups = sorted({(r["method"], r["g"]) for r in grown})
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, g in groups:
    mine = sorted((r["d_tokens"], r["flops_saved"]) for r in grown
                  if (r["method"], r["g"]) == (method, g))
    ax.plot([d for d, _ in mine], [np.nan if s is None else 100 * s for _, s in mine], "o-",
            label=f"g={g} {method}")
  ax.axhline(0, color="gray", linewidth=1)
  ax.set_xscale("log")
  ax.set_xlabel("growth timing d (tokens on the small model)")
  ax.set_ylabel("FLOPs saved to reach scratch's loss (%)")
  ax.set_title("saving against d (missing: never reached the target)")
  ax.legend()
  save(fig, PLOTS[1])

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method in dict.fromkeys(m for m, _ in groups):
    gs = sorted({r["g"] for r in grown if r["method"] == method})
    for r in grown:
      if r["method"] == method and r["flops_saved"] is not None:
        ax.plot(r["g"], 100 * r["flops_saved"], ".", color="gray")
    best = summary["best_d_per_g"][method]
    ax.plot(gs, [np.nan if best[str(g)] is None else 100 * best[str(g)]["flops_saved"]
                 for g in gs], "o-", label=f"{method}: best d per g")
    # The fair comparison of g: the same d at every g it was measured at.
    for d in sorted({r["d_steps"] for r in grown if r["method"] == method}):
      at_d = sorted((r["g"], r["flops_saved"]) for r in grown
                    if r["method"] == method and r["d_steps"] == d)
      if len(at_d) > 1:
        ax.plot([g for g, _ in at_d], [np.nan if v is None else 100 * v for _, v in at_d],
                "s--", linewidth=1, markersize=4, label=f"{method}: d = {d} steps")
  ax.axhline(0, color="gray", linewidth=1)
  ax.set_xticks(sorted({r["g"] for r in grown}))
  ax.set_xlabel("growth factor g")
  ax.set_ylabel("FLOPs saved to reach scratch's loss (%)")
  ax.set_title("saving against g (grey dots: every d; dashed: one d at every g)")
  ax.legend()
  save(fig, PLOTS[2])
  return written


# ------------------------------------------------------------------------------- main


def run(cfg: ml_collections.ConfigDict, workdir: str, d: Sequence[str] | None = None,
        g: Sequence[str] | None = None, methods: Sequence[str] | None = None,
        d_unit: str = "steps", budget_flops: float | None = None,
        target_loss: float | None = None, also: Sequence[str] = (), dry_run: bool = False,
        log: Callable[[str], None] = print, train_fn: Callable | None = None,
        only: Sequence[str] = (), jobs: int | str = 1, job: str = "",
        child_argv: Sequence[str] = ()) -> dict | None:
  """`growjax sweep`: plan (every refusal before compute), run the unfinished runs,
  analyse, print, write the summary and the plots. `dry_run`: print the plan only.
  `only`: a subset of the grid; `jobs` > 1: that many runs at a time, each a child
  `child_argv + --job=NAME` ('auto': as many as the memory holds, `auto_jobs`); `job`:
  be that child (train one run, no analysis)."""
  import jax
  jobs = parse_jobs(jobs)
  if jobs != 1 and jax.distributed.is_initialized():   # known before the backend starts
    if jobs != AUTO:
      raise ValueError(f"--jobs={jobs} runs grid runs side by side on one host; this sweep "
                       f"runs under jax.distributed across processes — give --jobs=1")
    jobs = 1
  child_env = dict(os.environ)
  if jobs != 1 and not job:   # the sweep itself trains nothing: leave the memory to its
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"   # jobs (before JAX's backend)
  if budget_flops is not None and budget_flops <= 1:
    raise ValueError(f"--budget_flops={budget_flops} must be a FLOP count > 1 — e.g. "
                     f"--budget_flops=1e18")
  if jobs != 1 and not child_argv:
    raise ValueError("--jobs > 1 needs the command line to start its children — run it "
                     "through the growjax command")
  if d is None:   # default: a tenth, a quarter and a half of the scratch run's steps
    d = [str(max(1, cfg.train.steps * f // 100)) for f in (10, 25, 50)]
    d_unit = "steps"
  d_steps = parse_d(d, d_unit, cfg)
  gs = parse_g(g, int(cfg.model.num_layers))
  methods = list(dict.fromkeys(methods or [cfg.growth.method or "stack"]))
  runs = plan(cfg, d_steps, gs, methods)
  if job:      # a child of --jobs: train this one run; the parent analyses
    _stop_with_parent()
    mine = [r for r in runs if r.name == job]
    if not mine:
      raise ValueError(f"--job={job} is not a run of this grid — choose from "
                       f"{', '.join(r.name for r in runs)}")
    execute(cfg, workdir, mine, log=log, train_fn=train_fn)
    return None
  if only:
    runs = select(runs, only)
  check(cfg, runs, jax.device_count())
  log(describe_plan(cfg, runs))
  if dry_run:
    return None
  for other in also:    # refused now, not after hours of compute
    _law_points([other])
  if jax.process_index() == 0:
    _record_plan(workdir, cfg, runs)
  in_children = jobs != 1
  if jobs == AUTO:    # on an accelerator even 1 job is a child: this process did not
    jobs, in_children = auto_jobs(cfg, max(1, sum(not is_done(workdir, r) for r in runs)),
                                  log=log)                   # preallocate its memory
  if in_children:
    if not execute_parallel(cfg, workdir, runs, jobs, child_argv, log=log, env=child_env):
      return None
  elif not execute(cfg, workdir, runs, log=log, train_fn=train_fn):
    return None
  summary = analyse(cfg, workdir, runs, budget_flops, target_loss, also)
  log(report(summary))
  if jax.process_index() == 0:
    summary["plots"] = plot(summary, workdir)
    path = epath.Path(workdir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=1))
    log(f"wrote {path}" + "".join(f"\nplot: {p}" for p in summary["plots"]))
  return summary
