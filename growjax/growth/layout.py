"""What growth needs to know about a parameter: its declaration in `growjax.model.PARAMS`.

Every growth operator asks three questions of a leaf: which axis is `layers`,
which axes grow, and whether the leaf reads the residual stream, writes it, or
scales it. All three are answered by the leaf's declared `model.Param` (its
logical axes and its role), which `map_leaves` hands to the operator with the
leaf; no tensor is recognised by its name and no role is guessed from the
order of its axes (the table itself is checked against the axis convention, in
`model.check_params`).

This module does not grow anything.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from growjax.model import LAYERS, SCALES, ModelConfig, Param, param_table


@functools.lru_cache(maxsize=64)
def params_of(cfg: ModelConfig) -> Any:
  """`model.param_table(cfg)`, cached (treat it as read-only)."""
  return param_table(cfg)


def is_param(x: Any) -> bool:
  return isinstance(x, Param)


def map_leaves(fn: Callable[..., Any], cfg: ModelConfig, *trees: Any) -> Any:
  """`fn(param, *leaves)` over the params-shaped `trees`, with each leaf's `model.Param`.

  The declarations lead so that `trees` may carry whole subtrees (or None) per leaf.
  """
  return jax.tree.map(fn, params_of(cfg), *trees, is_leaf=is_param)


def layer_axis(p: Param) -> int | None:
  return p.axes.index(LAYERS) if LAYERS in p.axes else None


def is_final_norm(p: Param) -> bool:
  """The scale outside the layer stack: the only one that feeds the LM head."""
  return p.role == SCALES and LAYERS not in p.axes
