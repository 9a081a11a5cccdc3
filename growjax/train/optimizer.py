"""AdamW with global-norm clipping and warmup + cosine decay from optax, or warmup-stable-
decay (WSD).

Defaults are the paper's recipe (betas 0.9/0.95, weight decay 0.1, clip 1.0,
peak 3e-4 cosine to 3e-5). Norm scales and embeddings are not decayed unless
the config says so; each parameter's weight-decay class is declared in
`growjax.model.PARAMS`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from growjax import model
from growjax.config import wsd_decay_start


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
  """`config.optimizer.schedule`: 'cosine' (the default: linear warmup to `peak_lr`,
  cosine to `end_lr` at `decay_steps`, default the run) or 'wsd' (`wsd_schedule`).
  A pure function of the step, so a grown run that continues the step count continues
  the schedule, and a resumed one resumes it exactly."""
  decay_steps = int(opt_cfg.decay_steps or total_steps)
  warmup = int(opt_cfg.warmup_steps)
  if opt_cfg.get("schedule", "cosine") == "wsd":
    return wsd_schedule(opt_cfg.peak_lr, opt_cfg.end_lr, warmup, decay_steps,
                        float(opt_cfg.get("decay_fraction", 0.2)),
                        opt_cfg.get("decay_shape", "1-sqrt"))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_cfg.peak_lr, warmup_steps=warmup,
      decay_steps=max(decay_steps, warmup + 1), end_value=opt_cfg.end_lr)


def wsd_schedule(peak_lr: float, end_lr: float, warmup_steps: int, total_steps: int,
                 decay_fraction: float, decay_shape: str) -> optax.Schedule:
  """Warmup-stable-decay: linear warmup from 0 to `peak_lr` over `warmup_steps`, `peak_lr`
  held until the last `decay_fraction` of `total_steps`, then down to `end_lr` at
  `total_steps` by `decay_shape` ('1-sqrt': 1 - sqrt(t), which Hägele et al. 2024 find
  matches cosine's final loss; 'linear'; 'cosine'), `end_lr` after. The stable phase is
  where growth events go: a model grown there trains on at the same learning rate, and
  one run's schedule serves every length whose decay starts later (Hu et al. 2024,
  MiniCPM)."""
  start = wsd_decay_start(total_steps, decay_fraction)
  length = max(total_steps - start, 1)
  shapes = {"1-sqrt": lambda t: 1.0 - jnp.sqrt(t), "linear": lambda t: 1.0 - t,
            "cosine": lambda t: 0.5 * (1.0 + jnp.cos(jnp.pi * t))}
  shape = shapes[decay_shape]

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    t = jnp.clip((step - start) / length, 0.0, 1.0)
    return jnp.where(step < warmup_steps, warm, end_lr + (peak_lr - end_lr) * shape(t))

  return schedule


def decay_mask(logical_axes: Any, opt_cfg: Any) -> Any:
  """True where weight decay applies, by each parameter's class in `model.PARAMS`:
  matrices always; vocab-sized tables (embedding, LM head) and norm scales by config.
  `logical_axes` (a params-shaped tree) gives the structure."""
  decays = {model.DECAY_MATRIX: True, model.DECAY_TABLE: bool(opt_cfg.decay_embeddings),
            model.DECAY_NORM: bool(opt_cfg.decay_norms)}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decays[model.param_at(path).decay], logical_axes,
      is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(opt_cfg: Any, schedule: optax.Schedule, logical_axes: Any,
                   model_cfg: Any = None) -> optax.GradientTransformation:
  """AdamW (+ clipping); under μP (`model_cfg.parametrization='mup'`) each parameter's
  update, weight decay included, is then scaled by its learning-rate multiplier
  (`lr_multipliers`), as per-parameter learning rates are."""
  parts = [
      optax.clip_by_global_norm(opt_cfg.clip_norm) if opt_cfg.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay, mask=decay_mask(logical_axes, opt_cfg)),
  ]
  if model_cfg is not None and model.mup.is_mup(model_cfg):
    scales = lr_multipliers(model_cfg)
    parts.append(optax.stateless(
        lambda updates, params=None: jax.tree.map(
            lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)))
  return optax.chain(*parts)


def lr_multipliers(model_cfg: Any) -> Any:
  """A params-shaped tree of each parameter's learning-rate multiplier
  (`growjax.model.mup.lr_multiplier`: 1 / m for hidden matrices under μP, times the
  depth factor; 1 everywhere under SP)."""
  return jax.tree.map(lambda p: model.mup.lr_multiplier(p, model_cfg),
                      model.param_table(model_cfg),
                      is_leaf=lambda x: isinstance(x, model.Param))


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
