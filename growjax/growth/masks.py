"""MSG-style masked growth, the growth side: which large layers and units are new.

For a resolved growth (`spec.GrowthSpec`) `record` gives, per axis that has new
members, every member's mask at ramp 0 (`growjax.train.mask_ramp`, which ramps them in
training): 0 for a new one, 1 for one the small model has, and under width `direct`
the copy count c of a kept unit (direct divided its outgoing weights among its c
copies; at 0 the kept unit alone, times c, gives what the copies give together).

  layers  a NEW entry of the layer map (`depth.NEW`: zero / random) and every repeat of
          a small layer (stack's second copy, interpolate's neighbour, llama_pro's
          zero-writer copy, ...) are new; each small layer's first occurrence is kept.
          The kept layers must be the small layers in order (true of every preset and
          of the default zero / random placement), else the mask at 0 is not the small
          model and `why_not` says so.
  mlp, heads, embed
          width's unit maps (`width.plan`, `AxisMap.old`): query heads only (a new kv
          head serves only new query heads). Width `zero` records no embed mask: it
          already starts with zero new components and norm scales compensated for
          E' components, which a masked norm (statistics over the kept E) would undo.

With these masks at 0, every operator except `learn` starts exactly
function-preserving: new layers and units add nothing, and (embed) the stream's new
components are zero with every RMSNorm's statistics those of the small model.

Pure: reads configs and maps, touches no arrays. The grown checkpoint's metadata
carries `record` (`offline`); the trainer builds the masks from it.
"""

from __future__ import annotations

import numpy as np

from growjax.train import mask_ramp
from growjax.growth import depth, width
from growjax.growth.spec import GrowthSpec
from growjax.model import EMBED, HEADS, LAYERS, MLP

MASKABLE_WIDTH = (None, "direct", "zero", "random")  # width operators with a kept/new split


def _kept_layers(layer_map) -> tuple[list[int], list[float]]:
  seen: set[int] = set()
  kept, at_zero = [], []
  for j in layer_map:
    if j == depth.NEW or j in seen:
      at_zero.append(0.0)
    else:
      seen.add(j)
      kept.append(j)
      at_zero.append(1.0)
  return kept, at_zero


def why_not(spec: GrowthSpec) -> str | None:
  """Why this growth cannot enter through masks (None: it can)."""
  if spec.learns:
    return "'learn' grows by dense learned maps, with no new layers or units to mask"
  if spec.experts is not None:
    return (f"expert growth ({spec.experts}) keeps the function by its router and scaling, "
            f"with no new units to mask")
  if spec.width_method not in MASKABLE_WIDTH:
    return (f"width {spec.width_method!r} changes the kept units too (not "
            f"{', '.join(w for w in MASKABLE_WIDTH if w)}), so the kept units alone are "
            f"not the small model")
  if spec.layer_map is not None:
    kept, _ = _kept_layers(spec.layer_map)
    if kept != list(range(spec.src.num_layers)):
      return (f"its layer map {list(spec.layer_map)} keeps the small layers in the order "
              f"{kept}, not 0..{spec.src.num_layers - 1}, so the model at mask 0 is not "
              f"the small one")
  return None


def record(spec: GrowthSpec) -> dict | None:
  """{axis: the per-member masks at ramp 0, as `mask_ramp.encode` runs} for the axes
  with new members; None when `why_not`."""
  if why_not(spec):
    return None
  out = {}
  if spec.layer_map is not None:
    out[LAYERS] = _kept_layers(spec.layer_map)[1]
  if spec.width_method is not None:
    maps = width.plan(spec.src, spec.mid)
    for axis in (MLP, HEADS, EMBED):
      if axis not in maps or (axis == EMBED and spec.width_method == "zero"):
        continue
      m = maps[axis]
      kept = m.count if spec.width_method == "direct" else np.ones_like(m.count)
      out[axis] = np.where(m.old, kept, 0.0)
  return {axis: mask_ramp.encode(v) for axis, v in out.items()}


def check(spec: GrowthSpec, ramp_steps: int) -> None:
  """Refuses `config.growth.mask_ramp_steps` > 0 for a growth that cannot be masked."""
  mask_ramp.check_steps(ramp_steps)
  why = why_not(spec) if ramp_steps else None
  if why:
    raise ValueError(f"config.growth.mask_ramp_steps={ramp_steps} cannot mask this growth: "
                     f"{why} — use another operator (e.g. config.growth.method='stack' or "
                     f"'random'), or set config.growth.mask_ramp_steps=0")
