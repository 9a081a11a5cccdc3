"""Depthwise growth as one index map over the `layers` axis.

A layer map is a tuple with one entry per large layer: `layer_map[i] = j` puts
small layer `j` at large layer `i`, and `NEW` (-1) marks a layer the small
model does not have. Every depthwise operator except `learn` is such a map
applied with one `jnp.take` per per-layer leaf (leaves without a `layers` axis,
i.e. embedding, final norm and LM head, are copied), so growth costs one pass
over memory and runs under `jax.jit`.

Presets, for `L` small and `L'` large layers:
  stack        `[0..L-1]` repeated `g = L'/L` times (G_stack; `g` must be whole).
  interpolate  `i -> floor(i * L / L')`, i.e. `[0,0,1,1,...]` for `g = 2`.
  stack_bottom / stack_middle / stack_top
               the layers are cut into three contiguous parts, bottom / middle /
               top, sized like `numpy.array_split(range(L), 3)` (the first parts
               take the remainder: L=6 -> [0,1] [2,3] [4,5]; L=4 -> [0,1] [2] [3]).
               Only the chosen part is repeated, in place, until the model has
               `L'` layers: stack_top of 6 -> 10 is [0,1,2,3,4,5,4,5,4,5]. The
               part's size must divide `L' - L`.
  llama_pro    LLaMA Pro block expansion: `L' - L` new layers spread evenly, one
               after every `k = L / (L' - L)` small layers (`L` must be a multiple
               of `L' - L`); each new layer is a copy of the layer before it with
               its writer leaves (`model.WRITES`: `o`, `down`) zero, so it is an
               exact identity and the logits do not change. 4 -> 6 is
               [0,1,1,2,3,3]; the second 1 and 3 have zero output projections.
  solar        SOLAR depth up-scaling: two copies of the small model with `m`
               layers dropped at the seam, `[0..L-m-1] + [m..L-1]`, so
               `L' = 2L - 2m` (`L'` even, `L < L' <= 2L`). 32 -> 48 drops m=8:
               layers 0..23 then 8..31. Plain copies (like `direct` with that map).
  middle       MIDAS-style stacking of the middle: the bottom and the top quarter
               (`L // 4` layers each) are kept once; the middle block between them
               is repeated in order, whole copies first and then as many of its
               first layers as needed, until the model has `L'` layers. 8 -> 12 is
               [0,1, 2,3,4,5, 2,3,4,5, 6,7]; 8 -> 10 is [0,1, 2,3,4,5, 2,3, 6,7].
               Any `L' >= L` fits; with `L < 4` it is `stack` cut to `L'`.
  zero / random (default placement)
               small layer `j` goes to `floor(j * L' / L)`, new layers fill the
               gaps after it: for whole `g`, each old layer is followed by `g-1`
               new ones. Any other placement is an explicit map with -1 entries.

New layers come from a params-shaped `fill` tree of the large model (its
initialiser's output for `random`); with `zero_writers` the leaves declared to
write the residual stream (`model.WRITES`: `o`, `down`) are zero there, so a new layer is an
exact identity of its input and the logits do not change. `llama_pro` instead lists
the large layers whose writers are zeroed (`zeroed_layers`): copies, not NEW layers.
Every grown leaf is constrained to its sharding (`growjax.growth.placement`; a
no-op without a mesh).

Optimizer moments (`optimizer_state.grow_moments`) follow the map with no fill:
a copied layer, also a `llama_pro` copy whose writers are zeroed, gets the Adam
moments of the layer it copies; a NEW layer gets zeros.

This module does not check configs or maps (`growjax.growth.spec.resolve` does,
before any of this runs) and does not learn maps (see `growjax.growth.learn`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from growjax.growth import layout, placement
from growjax.model import WRITES, ModelConfig, Param

NEW = -1
STACK_PARTS = {"stack_bottom": 0, "stack_middle": 1, "stack_top": 2}
PRESETS = ("stack", "interpolate") + tuple(STACK_PARTS) + ("llama_pro", "solar", "middle")


def stack_part(method: str, n_src: int) -> np.ndarray:
  """The small layers a `stack_bottom` / `stack_middle` / `stack_top` preset repeats."""
  return np.array_split(np.arange(n_src), 3)[STACK_PARTS[method]]


def preset_map(method: str, n_src: int, n_dst: int) -> tuple[int, ...]:
  """The layer map of a named preset (see the module docstring); `spec.resolve` has
  checked that the preset fits `n_src -> n_dst`."""
  if method == "stack":
    return tuple(i % n_src for i in range(n_dst))
  if method == "interpolate":
    return tuple(i * n_src // n_dst for i in range(n_dst))
  if method == "llama_pro":
    k = n_src // (n_dst - n_src)
    return tuple(j for b in range(0, n_src, k) for j in list(range(b, b + k)) + [b + k - 1])
  if method == "solar":
    m = n_src - n_dst // 2
    return tuple(range(n_src - m)) + tuple(range(m, n_src))
  if method == "middle":
    lo, hi = n_src // 4, n_src - n_src // 4
    mid = list(range(lo, hi))
    return (tuple(range(lo)) + tuple(mid[i % len(mid)] for i in range(n_dst - 2 * lo))
            + tuple(range(hi, n_src)))
  part = stack_part(method, n_src)
  lo, hi = int(part[0]), int(part[-1]) + 1
  reps = 1 + (n_dst - n_src) // part.size
  return tuple(range(lo)) + tuple(part.tolist()) * reps + tuple(range(hi, n_src))


def insert_map(n_src: int, n_dst: int) -> tuple[int, ...]:
  """Default placement for zero / random: old layers in order, new ones after each."""
  m = [NEW] * n_dst
  for j in range(n_src):
    m[j * n_dst // n_src] = j
  return tuple(m)


def zeroed_layers(method: str, layer_map: Sequence[int]) -> tuple[int, ...]:
  """The large layers that `method` copies with zero writers: for `llama_pro` each
  inserted copy (an entry equal to the one before it), else none."""
  if method != "llama_pro":
    return ()
  return tuple(i for i in range(1, len(layer_map)) if layer_map[i] == layer_map[i - 1])


def layers_fn(layer_map: Sequence[int], *, zero_writers: bool | Sequence[int] = False):
  """`fn(param, leaf, fill_leaf)` applying `layer_map` to one leaf (`param`: its
  `model.Param`).

  `fill_leaf` (large-model-shaped, or None for zeros) supplies the NEW layers;
  `zero_writers=True` makes the writer leaves (`o`, `down`) of the new layers zero,
  a sequence of large-layer indices (`zeroed_layers`) those of the listed layers.
  Leaves without a `layers` axis are returned as they are.
  """
  idx = np.asarray(layer_map, np.int32)
  new = idx == NEW
  src_idx = np.maximum(idx, 0)
  zeroed = np.zeros(idx.shape, bool)
  if not isinstance(zero_writers, bool):
    zeroed[list(zero_writers)] = True
    zero_writers = False

  def leaf(p: Param, x, fill):
    a = layout.layer_axis(p)
    if a is None or not hasattr(x, "ndim"):  # not per-layer / an optax.MaskedNode
      return x
    # `layers` is unsharded under the default rules: this gather stays on each device.
    y = placement.constrain(p.axes, jnp.take(x, src_idx, axis=a))
    if zeroed.any() and p.role == WRITES:
      mask = zeroed.reshape((-1,) + (1,) * (y.ndim - a - 1))
      y = placement.constrain(p.axes, jnp.where(mask, jnp.zeros_like(y), y))
    if not new.any():
      return y
    if fill is None or (zero_writers and p.role == WRITES):
      fill = jnp.zeros_like(y)
    mask = new.reshape((-1,) + (1,) * (y.ndim - a - 1))
    return placement.constrain(p.axes, jnp.where(mask, fill.astype(y.dtype), y))

  return leaf


def expand_layers(tree: Any, cfg: ModelConfig, layer_map: Sequence[int],
                  fill: Any = None, *, zero_writers: bool | Sequence[int] = False) -> Any:
  """Applies `layer_map` to every per-layer leaf of a params-shaped `tree` of `cfg`."""
  fn = layers_fn(layer_map, zero_writers=zero_writers)
  if fill is None:
    return layout.map_leaves(lambda n, x: fn(n, x, None), cfg, tree)
  return layout.map_leaves(fn, cfg, tree, fill)
