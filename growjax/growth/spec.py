"""What one `grow` call means, checked before any array is touched.

`resolve` turns (small config, large config, method, width method, layer map)
into a `GrowthSpec`, or raises `ValueError` naming the field and the fix. Both
`grow` and `grow_opt_state` go through it, so params and optimizer state are
always grown by the same operator. Nothing here touches arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from growjax.growth import depth
from growjax.model import ModelConfig

DEPTH_METHODS = depth.PRESETS + ("direct", "zero", "random", "learn")
WIDTH_METHODS = ("direct", "zero", "random", "learn")
# Width operator used when `width_method` is not given: the same family as `method`.
DEFAULT_WIDTH = {**{m: "direct" for m in depth.PRESETS + ("direct",)},
                 "zero": "zero", "random": "random", "learn": "learn"}
WIDTH_FIELDS = ("embed_dim", "mlp_dim", "num_heads", "num_kv_heads")


@dataclasses.dataclass(frozen=True)
class GrowthSpec:
  src: ModelConfig
  dst: ModelConfig
  mid: ModelConfig                  # dst's widths at src's depth: width grows first
  method: str                       # depthwise operator
  width_method: str | None          # None: no width growth
  layer_map: tuple[int, ...] | None  # None: no depth growth; the init map for 'learn'

  @property
  def needs_rng(self) -> bool:
    return (self.width_method in ("zero", "random")
            or (self.layer_map is not None and depth.NEW in self.layer_map))

  @property
  def learns(self) -> bool:
    return self.width_method == "learn" or (self.layer_map is not None
                                            and self.method == "learn")


def check_pair(src: ModelConfig, dst: ModelConfig) -> None:
  """Configs a growth operator can connect at all."""
  src.validate("src")
  dst.validate("dst")
  for f in ("vocab_size", "head_dim", "tie_embeddings"):
    a, b = getattr(src, f), getattr(dst, f)
    if a != b:
      raise ValueError(f"dst.{f}={b!r} differs from src.{f}={a!r}; growth keeps {f}: set "
                       f"dst.{f}={a!r} (grow heads with num_heads, not head_dim).")
  for f in ("num_layers",) + WIDTH_FIELDS:
    a, b = getattr(src, f), getattr(dst, f)
    if b < a:
      raise ValueError(f"dst.{f}={b} is smaller than src.{f}={a}; growth only enlarges a "
                       f"model: set dst.{f} >= {a}.")
  r_src = src.num_heads // src.num_kv_heads
  r_dst = dst.num_heads // dst.num_kv_heads
  if r_dst < r_src:
    raise ValueError(
        f"dst.num_heads / dst.num_kv_heads = {dst.num_heads}/{dst.num_kv_heads} = {r_dst} query "
        f"heads per kv head is below the small model's {r_src}: every small query head must "
        f"keep its kv head. Set dst.num_heads to a multiple of dst.num_kv_heads that is >= "
        f"{r_src * dst.num_kv_heads}, or lower dst.num_kv_heads.")


def resolve(src: ModelConfig, dst: ModelConfig, method: str = "stack",
            width_method: str | None = None,
            layer_map: Sequence[int] | None = None) -> GrowthSpec:
  check_pair(src, dst)
  if method not in DEPTH_METHODS:
    raise ValueError(f"method={method!r} is not a depth operator; choose one of "
                     f"{DEPTH_METHODS}.")
  grows_width = any(getattr(src, f) != getattr(dst, f) for f in WIDTH_FIELDS)
  if width_method is not None and width_method not in WIDTH_METHODS:
    raise ValueError(f"width_method={width_method!r}; choose one of {WIDTH_METHODS}.")
  wm = (width_method or DEFAULT_WIDTH[method]) if grows_width else None

  n_src, n_dst = src.num_layers, dst.num_layers
  if layer_map is not None and method in depth.PRESETS:
    raise ValueError(f"layer_map is given but method={method!r} is a preset with its own map; "
                     f"use method='direct' (or 'zero', 'random', 'learn') with layer_map.")
  if layer_map is None and n_src == n_dst:
    lmap = None
  elif method in depth.PRESETS:
    lmap = depth.preset_map(method, n_src, n_dst)
  elif method == "direct":
    if layer_map is None:
      raise ValueError("method='direct' needs layer_map (one small layer index per large "
                       "layer), or use a preset such as method='stack'.")
    lmap = depth.check_map(layer_map, n_src, n_dst, allow_new=False, keep_order=False)
  elif method in ("zero", "random"):
    lmap = depth.check_map(layer_map if layer_map is not None else depth.insert_map(n_src, n_dst),
                           n_src, n_dst, allow_new=True, keep_order=method == "zero")
  else:  # learn: the map its depth coefficients start from
    if layer_map is None and n_dst % n_src:
      raise ValueError(f"method='learn' starts from G_stack, which needs dst.num_layers="
                       f"{n_dst} to be a multiple of src.num_layers={n_src}; pass layer_map "
                       f"(e.g. the 'interpolate' map) to start from another map.")
    lmap = (depth.check_map(layer_map, n_src, n_dst, allow_new=False, keep_order=False)
            if layer_map is not None else depth.preset_map("stack", n_src, n_dst))
  mid = dst.replace(num_layers=n_src)
  return GrowthSpec(src, dst, mid, method, wm, lmap)
