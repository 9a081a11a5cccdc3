"""What `growjax train` runs: one stage, or a whole small -> grow -> large run.

A grow run keeps three directories under its workdir: `small/` (the base
model's run), `grown/` (the grown checkpoint, written by the same code as
`growjax grow`) and `large/` (the large model's run, started from `grown/`).
Each stage is skipped when its output is complete, so killing the run at any
point and starting it again resumes at the right stage and step.
"""

from __future__ import annotations

import ml_collections
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import distributed
from growjax import faults
from growjax.growth import offline
from growjax import train as train_lib


def small_stage_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base model's run: its own model, steps, batch and mesh; the LR schedule spans
  the whole run so that the large stage continues it."""
  g = cfg.growth
  small = cfg.copy_and_resolve_references()
  small.growth.enabled = False
  small.model = g.small_model
  small.train.steps = g.small_steps
  small.train.global_batch_size = g.small_global_batch_size or cfg.train.global_batch_size
  small.optimizer.decay_steps = cfg.optimizer.decay_steps or cfg.train.steps
  small.mesh = g.small_mesh
  return small


def large_stage_config(cfg: ml_collections.ConfigDict, grown_dir: str
                       ) -> ml_collections.ConfigDict:
  large = cfg.copy_and_resolve_references()
  large.growth.enabled = False
  large.train.init_from = grown_dir
  return large


def stage_view(small_dir: str, grown_dir: str, large_dir: str) -> tuple[int, int, int]:
  """Latest complete step of each stage's checkpoints as this process sees them (-1: none)."""
  latest = ckpt_lib.latest_complete_step
  return tuple(-1 if s is None else s for s in (
      latest(str(epath.Path(small_dir) / "checkpoints")), latest(grown_dir),
      latest(str(epath.Path(large_dir) / "checkpoints"))))


def run_grow(cfg: ml_collections.ConfigDict, workdir: str, log=print,
             stop_after_steps: int | None = None) -> dict:
  """Runs the stages still to do; returns each trained stage's history. A stage
  stopped early (preemption, `stop_after_steps`) ends the call there.

  Which stages are done is process 0's view of the filesystem, agreed by all:
  processes that picked stages from their own views could diverge and deadlock.
  """
  g = cfg.growth
  if g.small_steps <= 0 or g.small_steps >= cfg.train.steps:
    raise ValueError(f"config.growth.small_steps={g.small_steps} must be in "
                     f"(0, config.train.steps={cfg.train.steps}).")
  offline.check_grow_run(cfg)  # config.growth is refused here, not after the small stage
  root = epath.Path(workdir)
  small_dir, grown_dir, large_dir = (str(root / d) for d in ("small", "grown", "large"))
  history = {}
  small_latest, grown_latest, large_latest = distributed.agreed(
      stage_view(small_dir, grown_dir, large_dir))
  if small_latest < g.small_steps:
    log(f"== stage 1/3: small model, {g.small_steps} steps -> {small_dir}")
    history["small"] = train_lib.train(small_stage_config(cfg), small_dir,
                                       stop_after_steps=stop_after_steps)
    if history["small"]["stopped_at"] is not None:
      return history
  faults.maybe_kill("handoff")
  if large_latest < 0 and grown_latest < 0:
    log(f"== stage 2/3: grow by {g.method} -> {grown_dir}")
    offline.grow_checkpoint(
        str(epath.Path(small_dir) / "checkpoints"), grown_dir, large_stage_config(cfg, ""),
        step=g.small_steps, seed=cfg.seed, log=log, **offline.grow_run_kwargs(cfg))
  log(f"== stage 3/3: large model to step {cfg.train.steps} -> {large_dir}")
  history["large"] = train_lib.train(large_stage_config(cfg, grown_dir), large_dir,
                                     stop_after_steps=stop_after_steps)
  return history


def run(cfg: ml_collections.ConfigDict, workdir: str,
        stop_after_steps: int | None = None) -> dict:
  """`growjax train`: a whole grow run when `config.growth.enabled`, else one stage."""
  distributed.check_shared_workdir(workdir)
  if cfg.growth.enabled:
    return run_grow(cfg, workdir, stop_after_steps=stop_after_steps)
  return train_lib.train(cfg, workdir, stop_after_steps=stop_after_steps)
