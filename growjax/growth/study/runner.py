"""Training the grid's runs: one after another in this process (`execute`), or `--jobs N`
at a time as child processes (`execute_parallel`), each with its log in WORKDIR/logs/,
an equal share of the accelerator's memory, and the sweep's SIGTERM / SIGINT passed on.

Each run is a normal `growth.stages.run` (the scratch run too), which resumes as
every run does, so a rerun of the sweep continues where it stopped; nothing here changes
how a run trains.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import ml_collections
from etils import epath

from growjax.growth.study.grid import SweepRun, is_done, run_config, run_dir


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


def job_log(workdir: str, run: SweepRun) -> epath.Path:
  return epath.Path(workdir) / "logs" / f"{run.name}.log"


def _last_line(path: epath.Path, width: int = 110) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [l.strip() for l in f.read().splitlines() if l.strip()]
  except OSError:
    return ""
  return lines[-1][:width] if lines else ""



def stop_with_parent() -> None:
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

