"""`growjax sweep`: when to grow and by how much, measured on the user's own data.

For one target model (a run config's model, steps, batch and data) the sweep runs one
scratch run and a grid of grow runs over the growth timing d (small-stage steps, or
tokens), the growth factor g (the small model is the target with num_layers / g
layers) and optionally the depth operator (config.growth.method). Every grow run
spends the scratch run's FLOPs: its large stage gets the steps that the small stage
left of the budget (`growth.budget`, the rule the repro configs use). Then it reports the
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

This module is the command: it reads the flags into a grid and calls the study's rooms
(`growth.study`: grid, jobs, runner, analysis, report, plots) in order. It adds no new
training behaviour.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import ml_collections

from growjax.growth.study import analysis, grid, jobs as jobs_lib, plots, report, runner


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
  `child_argv + --job=NAME` ('auto': as many as the memory holds, `jobs.auto_jobs`); `job`:
  be that child (train one run, no analysis)."""
  import jax
  jobs = jobs_lib.parse_jobs(jobs)
  if jobs != 1 and jax.distributed.is_initialized():   # known before the backend starts
    if jobs != jobs_lib.AUTO:
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
  d_steps = grid.parse_d(d, d_unit, cfg)
  gs = grid.parse_g(g, int(cfg.model.num_layers))
  methods = list(dict.fromkeys(methods or [cfg.growth.method or "stack"]))
  runs = grid.plan(cfg, d_steps, gs, methods)
  if job:      # a child of --jobs: train this one run; the parent analyses
    runner.stop_with_parent()
    mine = [r for r in runs if r.name == job]
    if not mine:
      raise ValueError(f"--job={job} is not a run of this grid — choose from "
                       f"{', '.join(r.name for r in runs)}")
    runner.execute(cfg, workdir, mine, log=log, train_fn=train_fn)
    return None
  if only:
    runs = grid.select(runs, only)
  grid.check(cfg, runs, jax.device_count())
  log(grid.describe_plan(cfg, runs))
  if dry_run:
    return None
  for other in also:    # refused now, not after hours of compute
    analysis.law_points([other])
  if jax.process_index() == 0:
    grid.record_plan(workdir, cfg, runs)
  in_children = jobs != 1
  if jobs == jobs_lib.AUTO:   # on an accelerator even 1 job is a child: this process did
    left = max(1, sum(not grid.is_done(workdir, r) for r in runs))  # not preallocate its
    jobs, in_children = jobs_lib.auto_jobs(cfg, left, log=log)      # memory
  if in_children:
    if not runner.execute_parallel(cfg, workdir, runs, jobs, child_argv, log=log,
                                   env=child_env):
      return None
  elif not runner.execute(cfg, workdir, runs, log=log, train_fn=train_fn):
    return None
  summary = analysis.analyse(cfg, workdir, runs, budget_flops, target_loss, also)
  log(report.report(summary))
  if jax.process_index() == 0:
    summary["plots"] = plots.plot(summary, workdir)
    path = report.write(summary, workdir)
    log(f"wrote {path}" + "".join(f"\nplot: {p}" for p in summary["plots"]))
  return summary
