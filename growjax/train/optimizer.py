"""AdamW with global-norm clipping and warmup + cosine decay, all from optax.

Defaults are the paper's recipe (betas 0.9/0.95, weight decay 0.1, clip 1.0,
peak 3e-4 cosine to 3e-5). Norm scales and embeddings are not decayed unless
the config says so; each parameter's weight-decay class is declared in
`growjax.model.PARAMS`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from growjax import model


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup to `peak_lr`, cosine to `end_lr` at `decay_steps` (default: the run)."""
  decay_steps = int(opt_cfg.decay_steps or total_steps)
  warmup = int(opt_cfg.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_cfg.peak_lr, warmup_steps=warmup,
      decay_steps=max(decay_steps, warmup + 1), end_value=opt_cfg.end_lr)


def decay_mask(logical_axes: Any, opt_cfg: Any) -> Any:
  """True where weight decay applies, by each parameter's class in `model.PARAMS`:
  matrices always; vocab-sized tables (embedding, LM head) and norm scales by config.
  `logical_axes` (a params-shaped tree) gives the structure."""
  decays = {model.DECAY_MATRIX: True, model.DECAY_TABLE: bool(opt_cfg.decay_embeddings),
            model.DECAY_NORM: bool(opt_cfg.decay_norms)}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decays[model.param_at(path).decay], logical_axes,
      is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(opt_cfg: Any, schedule: optax.Schedule,
                   logical_axes: Any) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(opt_cfg.clip_norm) if opt_cfg.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay, mask=decay_mask(logical_axes, opt_cfg)),
  )


def set_schedule_step(opt_state: Any, step: jax.Array) -> Any:
  """Points every learning-rate schedule in `opt_state` at `step`.

  A grown model starts with fresh Adam moments (bias correction restarts) but
  continues the small model's learning-rate schedule, as the paper does.
  """
  def fix(s):
    if isinstance(s, optax.ScaleByScheduleState):
      return s._replace(count=jax.numpy.asarray(step, s.count.dtype))
    return s
  return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
