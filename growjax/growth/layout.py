"""What growth needs to know about a parameter, read from its logical axis names only.

Every growth operator asks three questions of a leaf: which axis is `layers`,
which axes grow, and whether the leaf reads the residual stream, writes it, or
scales it. All three are answered from `growjax.model.logical_axes`; no tensor
is recognised by its name. The role rule holds for every weight of a LLaMA
block: the residual-stream axis `embed` is the first axis of a weight that
reads the stream (q, k, v, gate, up, LM head: its other axes are outputs) and
the last axis of a weight that writes it (o, down, embedding table: its other
axes are inputs); a leaf whose only axis is `embed` is an RMSNorm scale.

This module does not grow anything.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from growjax.model import EMBED, LAYERS, ModelConfig, logical_axes

READER, WRITER, SCALE = "reader", "writer", "scale"


@functools.lru_cache(maxsize=64)
def axes_of(cfg: ModelConfig) -> Any:
  """`logical_axes(cfg)`, cached: it traces the model once per config."""
  return logical_axes(cfg)


def is_names(x: Any) -> bool:
  """Leaf test for a logical-axes tree (its leaves are tuples of strings)."""
  return isinstance(x, tuple) and all(isinstance(n, str) for n in x)


def map_leaves(fn: Callable[..., Any], cfg: ModelConfig, *trees: Any) -> Any:
  """`fn(names, *leaves)` over the params-shaped `trees`, with each leaf's axis names.

  The axes tree leads so that `trees` may carry whole subtrees (or None) per leaf.
  """
  return jax.tree.map(fn, axes_of(cfg), *trees, is_leaf=is_names)


def layer_axis(names: tuple[str, ...]) -> int | None:
  return names.index(LAYERS) if LAYERS in names else None


def role(names: tuple[str, ...]) -> str:
  """READER, WRITER or SCALE (see the module docstring)."""
  rest = tuple(n for n in names if n != LAYERS)
  if rest == (EMBED,):
    return SCALE
  if len(rest) >= 2 and rest[-1] == EMBED and EMBED not in rest[:-1]:
    return WRITER
  if len(rest) >= 2 and rest[0] == EMBED and EMBED not in rest[1:]:
    return READER
  raise ValueError(
      f"growth cannot place a parameter with logical axes {names}: a weight must have "
      f"'{EMBED}' as its first axis (reads the residual stream) or its last (writes it), "
      f"or be an '{EMBED}'-only norm scale. Annotate new parameters that way in "
      f"growjax.model.")


def is_final_norm(names: tuple[str, ...]) -> bool:
  """The scale outside the layer stack: the only one that feeds the LM head."""
  return names == (EMBED,)
