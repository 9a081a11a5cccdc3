"""Creating a declared parameter: its shape from the parameter table
(`growjax.model.params`), its initialiser from the parametrization (`growjax.model.mup`:
SP's init_std, over sqrt(2 num_layers) for a block's output projections, or μP's
width- and depth-aware scales). The flax modules call `make_param` for every weight.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from growjax.model import mup
from growjax.model.params import AXIS_FIELDS, INIT_ONES, INIT_ZEROS, LAYERS, PARAMS, Param


def _initializer(p: Param, cfg):
  """Ones for norms; else normal with `growjax.model.mup.init_std` (SP: init_std, over
  sqrt(2 num_layers) for the output projections of a block)."""
  if p.init == INIT_ONES:
    return nn.initializers.ones
  if p.init == INIT_ZEROS:   # a model family's biases
    return nn.initializers.zeros
  return nn.initializers.normal(stddev=mup.init_std(p, cfg))


def make_param(module: nn.Module, name: str) -> jax.Array:
  """Creates `module`'s parameter `name` as `PARAMS` declares it: logical axes (the
  scan adds `layers`), shape from `AXIS_FIELDS`, initialiser."""
  path = "/".join(module.path + (name,))
  if path not in PARAMS:
    raise ValueError(f"parameter {path!r} is not declared in growjax.model.PARAMS — "
                     f"declare its axes, role, decay class and init there")
  p, cfg = PARAMS[path], module.cfg
  axes = p.axes[1:] if p.axes[0] == LAYERS else p.axes
  shape = tuple(getattr(cfg, AXIS_FIELDS[a]) for a in axes)
  init = nn.with_logical_partitioning(_initializer(p, cfg), axes)
  return module.param(name, init, shape, jnp.dtype(cfg.param_dtype))
