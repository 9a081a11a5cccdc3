"""Widthwise growth: more `embed`, `mlp`, `heads` and `kv_heads` units, layer count kept.

Each grown logical axis gets a unit map (`AxisMap`): which small unit every
large unit copies, whether it *is* that small unit (kept in place) or a new
one, and how many large units copy the same small unit. A leaf is grown with
one gather per grown axis plus an elementwise rescale or `where`, so cost is
one pass over memory and the whole thing runs under `jax.jit`. Each gathered
leaf is constrained to its sharding (`growjax.growth.placement`), and a whole
growth factor gathers by broadcast + reshape (`take_units`), which XLA splits
into per-device pieces: on a mesh, per-device memory falls with the device count.

Unit placement. `embed` and `mlp`: small unit `u` stays at `u`; new unit `d`
copies `d mod S` (so a whole growth factor copies every unit equally often).
Heads: small kv head `k` stays at `k`, new kv head `k'` copies `k' mod K`. The
query heads of large kv group `k'` are the small heads of group `k' mod K`,
in order, then copies of them cycled until the group is full; so every small
query head keeps its kv head, and grouped-query attention needs the large
group size `num_heads / num_kv_heads` to be at least the small one.

Operators (each leaf's role, read / write / scale the residual stream, is the one
declared in `growjax.model.PARAMS`):
  direct  bert2BERT-FPI / Net2Net: every large unit copies its small unit; an
          axis that is an *input* of a weight (the `embed` axis of a reader,
          the non-`embed` axes of a writer) is divided by the copy count, so
          the copies' contributions add up to the old one. MLP and head growth
          is exactly function preserving. `embed` growth is exact only when
          every unit is copied equally often (dst.embed_dim a multiple of
          src.embed_dim): RMSNorm then sees the same mean square; otherwise the
          norm's mean is a weighted one and the logits move (several percent),
          so `spec.resolve` refuses it unless `allow_inexact` is given.
          Tied embeddings: the table writes the stream (columns copied) and is
          also the head (rows would have to be divided); the division is moved
          into the final norm scale, the head's only input, which keeps tied
          models exact too. Copies receive identical gradients and stay equal
          under training unless something breaks the symmetry (as in Net2Net).
  zero    old units copied in place; new units of weights that write the
          residual stream (o, down, embedding table) are zero, so the new
          stream components and the new neurons' outputs are zero; weights
          that read (q, k, v, gate, up, head) take new entries from the
          initialiser so gradients reach the new units. New stream components
          lower the RMS by sqrt(E/E'); every norm scale is multiplied by
          sqrt(E/E') to compensate. That is exact up to the norm epsilon: it is
          exact when dst.norm_eps = src.norm_eps * E / E', and otherwise off by
          a relative ~eps / mean(x^2). dst's norm_eps is the large config's
          (the large run trains with it), so growth cannot change it: `grow`
          warns and `growjax grow` prints the measured change and the exact
          value to set.
  random  old units copied in place, every new entry from the initialiser.
  split   `direct` with the copies' symmetry broken (bert2BERT AKI / LEMON /
          HyperCloning-style asymmetric split): on every divided (input-side)
          axis copy i of a unit holding W/c gets W/c + N_i, where the N_i of the
          c copies of one small unit sum to zero, so the sum over copies, hence
          the function, is exactly `direct`'s (float32 rounding only: measured
          <= 3.4e-7 relative logit change, as direct's; the tests bound it at
          1e-5). N_i = (Z_i - mean over the copies of Z) x sqrt(c/(c-1)) x
          width_noise x RMS(W) / c, Z ~ N(0, 1): each entry's noise has std
          width_noise x RMS(W) / c, i.e. width_noise is relative to the copy's
          own size (`config.growth.width_noise`, default DEFAULT_NOISE = 1.0,
          the best of 0.07 / 0.35 / 0.71 / 1 / 2 in a short CPU run of the
          operator table's width growth; RMS per layer for the scanned leaves;
          a leaf with two divided axes, the tied final norm, gets the product).
          A non-zero-sum noise (HyperCloning's other option) would move the
          logits (tested: by > 1e-3 relative) and is not offered. Output-side
          copies stay equal at growth but their readers now differ, so their
          gradients differ from the first step on; input-side copies differ in
          value at once (their first gradients are still equal: same input,
          same output gradient) and their gradients part after one step. Units
          copied once get no noise. The draw is per leaf: `fold_in(key,
          crc32(leaf path))`, so one leaf's noise never depends on which other
          leaves are grown with it (streamed growth, `growjax.growth.stream`,
          equals the whole-state path bit for bit; on a mesh the per-layer RMS
          is a sharded reduction: ~1 ulp from the unsharded result). Exactness
          is direct's: embed growth needs a whole factor.

`learn` (LiGO) lives in `growjax.growth.learn` and starts from `direct`.

Adam state (`moment_fn`, for `opt_state=grow`; the default `reset` starts fresh):
`split` maps the moments exactly as `direct` (first moments of output-side copies
x 1/c, second x 1/c^2, input-side copies keep their unit's): those are the grown
model's own gradient moments under `direct`, and under `split` up to the noise's
effect on the gradients (the grown model's noise is not in the small model's
history, so nothing better is known).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from growjax.growth import layout, placement
from growjax.model import (AXIS_FIELDS, EMBED, HEADS, KV_HEADS, MLP, READS, SCALES, WRITES,
                           ModelConfig, Param)

AXES = (EMBED, MLP, HEADS, KV_HEADS)  # the logical axes width growth grows
METHODS = ("direct", "zero", "random", "split")  # learn: growjax.growth.learn
DEFAULT_NOISE = 1.0  # split: noise std relative to a copy's RMS (see the docstring)


@dataclasses.dataclass(frozen=True, eq=False)
class AxisMap:
  """Large units of one logical axis in terms of the small one's."""
  src: np.ndarray    # (D,) int32: the small unit each large unit copies
  old: np.ndarray    # (D,) bool: the large unit is that small unit, kept in place
  count: np.ndarray  # (D,) float32: how many large units copy src[d]
  size: int          # D_small
  tiling: tuple[int, int, int] | None  # (A, g, B) when src is a block tiling, else None

  @classmethod
  def build(cls, src: np.ndarray, old: np.ndarray, size: int) -> "AxisMap":
    src = np.asarray(src, np.int32)
    count = np.bincount(src, minlength=size)[src].astype(np.float32)
    return cls(src, np.asarray(old, bool), count, size, _tiling(src, size))

  def one_hot(self) -> np.ndarray:
    """(D, D_small) matrix of the copy: row d is unit src[d]."""
    return np.eye(self.size, dtype=np.float32)[self.src]


def plan(src: ModelConfig, dst: ModelConfig) -> dict[str, AxisMap]:
  """Unit maps of the axes that grow from `src` to `dst` (callers validate first)."""
  maps = {}
  for name in (EMBED, MLP):
    n_src, n_dst = getattr(src, AXIS_FIELDS[name]), getattr(dst, AXIS_FIELDS[name])
    if n_dst != n_src:
      d = np.arange(n_dst)
      maps[name] = AxisMap.build(d % n_src, d < n_src, n_src)
  if (dst.num_heads, dst.num_kv_heads) != (src.num_heads, src.num_kv_heads):
    k_src, k_dst = src.num_kv_heads, dst.num_kv_heads
    r_src, r_dst = src.num_heads // k_src, dst.num_heads // k_dst
    kv = np.arange(k_dst)
    kv_src = kv % k_src
    p = np.arange(dst.num_heads)
    group, j = p // r_dst, p % r_dst
    maps[HEADS] = AxisMap.build(kv_src[group] * r_src + j % r_src,
                                (group < k_src) & (j < r_src), src.num_heads)
    if k_dst != k_src:
      maps[KV_HEADS] = AxisMap.build(kv_src, kv < k_src, k_src)
  return maps


def divided_axes(p: Param, maps: dict[str, AxisMap], tied: bool) -> set[int]:
  """Grown axes that are inputs of the weight: `direct` divides them by the copy count.
  Which ones is read from the declared role, never from the order of the axes."""
  grown = [i for i, n in enumerate(p.axes) if n in maps]
  if p.role == WRITES:
    return {i for i in grown if p.axes[i] != EMBED}
  if p.role == READS:
    return {i for i in grown if p.axes[i] == EMBED}
  if tied and layout.is_final_norm(p):
    return set(grown)
  return set()


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
  return v.reshape((-1,) + (1,) * (ndim - axis - 1))


def _tiling(src: np.ndarray, size: int) -> tuple[int, int, int] | None:
  """(A, g, B) with `src` = the small axis seen as (A, B), each of A's blocks of B
  units repeated g times in place: `[0..D-1] * g` is (1, g, D) (embed, mlp, heads
  when kv heads grow too); heads in kv groups of r that become groups of g*r are
  (K, g, r). None for any other map (non-integer growth factors)."""
  if src.size % size:
    return None
  g = src.size // size
  for a in range(1, size + 1):
    if size % a:
      continue
    b = size // a
    tiled = np.broadcast_to(np.arange(size).reshape(a, 1, b), (a, g, b)).reshape(-1)
    if np.array_equal(tiled, src):
      return a, g, b
  return None


def take_units(x, axis: int, m: AxisMap):
  """`jnp.take(x, m.src, axis)`, as a broadcast and reshapes when the map is a tiling.

  Same values; the point is sharding. XLA partitions a gather along a sharded
  axis by first gathering the whole axis onto every device (per-device memory
  that does not fall with the device count); a broadcast + reshape it
  partitions into shard-sized pieces.
  """
  if m.tiling is None:
    return jnp.take(x, m.src, axis=axis)
  a, g, b = m.tiling
  lead, rest = x.shape[:axis], x.shape[axis + 1:]
  y = x.reshape(lead + (a, 1, b) + rest)
  y = jnp.broadcast_to(y, lead + (a, g, b) + rest)
  return y.reshape(lead + (a * g * b,) + rest)


def _gather(x, p: Param, maps):
  for i, n in enumerate(p.axes):
    if n in maps:
      x = placement.constrain(p.axes, take_units(x, i, maps[n]))
  return x


def _old_mask(p: Param, maps, ndim):
  mask = np.ones((1,) * ndim, bool)
  for i, n in enumerate(p.axes):
    if n in maps:
      mask = mask & _along(maps[n].old, i, ndim)
  return mask


def _norm_compensation(p: Param, src: ModelConfig, dst: ModelConfig, method: str) -> float:
  if method == "zero" and p.role == SCALES:
    return float(np.sqrt(src.embed_dim / dst.embed_dim))
  return 1.0


def _copy_mean(z, axis: int, m: AxisMap):
  """Each entry of `z` replaced by the mean, along `axis`, over the large units that
  copy its small unit (a reshape when the map is a tiling, else a dense average)."""
  if m.tiling is not None:
    a, g, b = m.tiling
    lead, rest = z.shape[:axis], z.shape[axis + 1:]
    y = jnp.mean(z.reshape(lead + (a, g, b) + rest), axis=axis + 1, keepdims=True)
    return jnp.broadcast_to(y, lead + (a, g, b) + rest).reshape(z.shape)
  per_small = np.bincount(m.src, minlength=m.size).astype(np.float32)
  avg_DxS = m.one_hot() / np.maximum(per_small, 1.0)
  means = jnp.tensordot(z, jnp.asarray(avg_DxS), axes=([axis], [0]),
                        precision=jax.lax.Precision.HIGHEST)
  return jnp.take(jnp.moveaxis(means, -1, axis), m.src, axis=axis)


def leaf_key(key: jax.Array, path: str) -> jax.Array:
  """The key of one leaf's `split` noise: depends on the key and the leaf's path only."""
  return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


def split_noise(key: jax.Array, p: Param, x, shape: tuple[int, ...],
                maps: dict[str, AxisMap], divided: set[int], noise: float):
  """float32 noise of the grown leaf's `shape` that sums to zero over the copies of
  every small unit along each divided axis: (Z - copy mean of Z) x sqrt(c / (c-1))
  x width_noise x RMS(x) / c, Z ~ N(0, 1), so each entry's std is width_noise x
  RMS(x) / c (c: its unit's copy count; per divided axis). `x` is the small leaf
  (its RMS per layer for a scanned leaf)."""
  z = placement.constrain(p.axes, jax.random.normal(key, shape, jnp.float32))
  ndim = len(shape)
  scale = np.full((1,) * ndim, noise, np.float32)
  for i in sorted(divided):
    m = maps[p.axes[i]]
    # Zero-sum along one axis keeps it along the others' groups: subtract per axis.
    z = z - _copy_mean(z, i, m)
    c = m.count
    unbiased = np.sqrt(c / np.maximum(c - 1.0, 1.0)) * (c > 1)  # removing the mean
    scale = scale * _along(unbiased / c, i, ndim)                # shrank it by (c-1)/c
  la = layout.layer_axis(p)
  rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)),
                          axis=tuple(j for j in range(x.ndim) if j != la), keepdims=True))
  return placement.constrain(p.axes, z * jnp.asarray(scale) * rms)


def _map_with_paths(fn, cfg: ModelConfig, *trees):
  """`layout.map_leaves` that also hands `fn` the leaf's key path as a string."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p, *xs: fn(jax.tree_util.keystr(path), p, *xs), layout.params_of(cfg),
      *trees, is_leaf=layout.is_param)


def grow_width(params: Any, src: ModelConfig, dst: ModelConfig, method: str,
               fresh: Any = None, *, key: jax.Array | None = None,
               noise: float = DEFAULT_NOISE) -> Any:
  """Grows every leaf's `embed`/`mlp`/`heads`/`kv_heads` axes; layer count untouched.

  `fresh` (params of the large width with src.num_layers layers, from the
  initialiser) is needed by `zero` and `random`; `key` and `noise` (relative to a
  copy's RMS) by `split`.
  """
  maps = plan(src, dst)
  if not maps:
    return params
  if method not in METHODS:
    raise ValueError(f"unknown width method {method!r}; choose {', '.join(METHODS)} or learn.")
  tied = src.tie_embeddings

  def divide(p, y):
    for i in divided_axes(p, maps, tied):
      y = y * _along(1.0 / maps[p.axes[i]].count, i, y.ndim).astype(y.dtype)
    return y

  def leaf(p, x, f):
    y = _gather(x, p, maps)
    if method == "direct":
      return placement.constrain(p.axes, divide(p, y))
    comp = _norm_compensation(p, src, dst, method)
    if comp != 1.0:
      y = y * jnp.asarray(comp, y.dtype)
    if method == "zero" and p.role == WRITES:
      fill = jnp.zeros_like(y)
    else:
      fill = placement.constrain(p.axes, f * comp).astype(y.dtype)
    return placement.constrain(p.axes, jnp.where(_old_mask(p, maps, y.ndim), y, fill))

  def split_leaf(path, p, x):
    y = divide(p, _gather(x, p, maps))
    divided = {i for i in divided_axes(p, maps, tied)
               if np.any(maps[p.axes[i]].count > 1)}
    if not divided:
      return placement.constrain(p.axes, y)
    n = split_noise(leaf_key(key, path), p, x, y.shape, maps, divided, noise)
    return placement.constrain(p.axes, (y.astype(jnp.float32) + n).astype(y.dtype))

  if method == "direct":
    return layout.map_leaves(lambda n, x: leaf(n, x, None), src, params)
  if method == "split":
    if key is None:
      raise ValueError("width method 'split' draws its symmetry-breaking noise from a key "
                       "— pass rng to grow")
    return _map_with_paths(split_leaf, src, params)
  if fresh is None:
    raise ValueError(f"width method {method!r} needs initialiser values for the new units "
                     f"(pass rng to grow).")
  return layout.map_leaves(leaf, src, params, fresh)


def moment_fn(src: ModelConfig, dst: ModelConfig, method: str):
  """`fn(param, moment_leaf, power)` mapping an optimizer moment as `grow_width` maps
  the params (`power` 1: a first moment, 2: a second moment).

  The moment follows the gradient, not the weight. Under `direct`, a divided
  (input-side) copy sees the same input and the same output gradient as its
  small unit, so its gradient is unchanged; a copied output unit feeds readers
  that were divided by its copy count, so its gradient is divided by that
  count: first moments scale by 1/c, second moments by 1/c^2. Under `zero`, a
  norm scale multiplied by a gets its gradient divided by a. New entries get
  zero moments. `split` maps them as `direct` (see the module docstring).
  """
  maps = plan(src, dst)
  tied = src.tie_embeddings

  def leaf(p, m, power):
    if not maps or not hasattr(m, "ndim"):  # nothing grows / an optax.MaskedNode
      return m
    y = _gather(m, p, maps)
    if method in ("direct", "split"):
      divided = divided_axes(p, maps, tied)
      for i, n in enumerate(p.axes):
        if n in maps and i not in divided:
          y = y * _along(maps[n].count ** -power, i, y.ndim).astype(y.dtype)
      return placement.constrain(p.axes, y)
    comp = _norm_compensation(p, src, dst, method)
    if comp != 1.0:
      y = y * jnp.asarray(comp ** -power, y.dtype)
    return placement.constrain(p.axes, jnp.where(_old_mask(p, maps, y.ndim), y,
                                                 jnp.zeros_like(y)))

  return leaf
