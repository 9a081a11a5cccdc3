"""G_learn (LiGO, Wang et al. 2023): a learned linear map from small to large weights.

The large model's parameters are a linear function of the frozen small ones.
Only the map's coefficients are trained, for a few Adam steps on next-token
cross-entropy of the large model, then the map is applied once and thrown
away: the result is a plain params tree.

Depth: every per-layer leaf (one parameter group per leaf: q, k, v, o, gate,
up, down and both norms) has its own `(L', L)` matrix mixing the small layers,
initialised to a layer map (G_stack unless `layer_map` is given). Width: each
grown logical axis has two expansion matrices, one applied where `direct`
copies units (outputs) and one where it divides them (inputs), initialised to
exactly those operations, so training starts from the `direct` model. The
`embed` matrices are shared by every leaf, since all of them read or write the
same residual stream; `mlp`, `heads` and `kv_heads` matrices are per layer,
`(L, D', D)`. Embedding, final norm and LM head are copied by depth learning.

Not jit-able as a whole (it runs a training loop over Python batches); each
step is jitted. Memory: the width maps hold `2 * L * D' * D` numbers per
internal axis, on top of the large model and its gradients.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from growjax import loss as loss_lib
from growjax.growth import layout, width
from growjax.model import EMBED, ModelConfig, Transformer, head_kernel

HIGHEST = jax.lax.Precision.HIGHEST


def lm_loss(params: Any, cfg: ModelConfig, tokens_BxT1: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of `tokens[:, 1:]` given `tokens[:, :-1]`."""
  inputs, targets = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
  hidden = Transformer(cfg).apply({"params": params}, inputs, return_hidden=True)
  t = inputs.shape[1]
  chunk = 512 if t % 512 == 0 else t
  loss, _ = loss_lib.cross_entropy(hidden, head_kernel(params, cfg), targets,
                                   chunk_len=chunk, dtype=cfg.compute_dtype)
  return loss


def _take_steps(batches: Iterable, steps: int) -> Iterator:
  """`steps` batches, going round a re-iterable source (a list) as often as needed."""
  n = 0
  while n < steps:
    got = False
    for batch in batches:
      got = True
      yield jnp.asarray(batch, jnp.int32)
      n += 1
      if n == steps:
        return
    if not got or iter(batches) is batches:  # empty, or a spent iterator
      return


def _fit(maps: Any, materialise, small: Any, cfg: ModelConfig, batches: Iterable,
         steps: int, lr: float) -> tuple[Any, list[float]]:
  """Adam on the map coefficients only; returns them and the loss before each step."""
  if batches is None:
    raise ValueError("method 'learn' needs learn_batches: an iterable of int32 token arrays "
                     "(batch, seq_len + 1) to train the expansion maps on.")
  tx = optax.adam(lr)

  @jax.jit
  def step(maps, opt_state, small, tokens):
    loss, grads = jax.value_and_grad(
        lambda m: lm_loss(materialise(m, small), cfg, tokens))(maps)
    updates, opt_state = tx.update(grads, opt_state, maps)
    return optax.apply_updates(maps, updates), opt_state, loss

  opt_state = tx.init(maps)
  losses = []
  for tokens in _take_steps(batches, steps):
    maps, opt_state, loss = step(maps, opt_state, small, tokens)
    losses.append(loss)
  if steps > 0 and not losses:
    raise ValueError("learn_batches yielded no batch; give at least one int32 token array "
                     "(batch, seq_len + 1).")
  return maps, [float(x) for x in losses]


def _along_layers(x: jax.Array, axis: int, m: jax.Array) -> jax.Array:
  """`y[..., i, ...] = sum_j m[i, j] x[..., j, ...]` over `axis`."""
  y = jnp.tensordot(m.astype(x.dtype), x, axes=([1], [axis]), precision=HIGHEST)
  return jnp.moveaxis(y, 0, axis)


def learn_depth(params: Any, cfg: ModelConfig, num_layers: int, init_map: Sequence[int],
                batches: Iterable, steps: int, lr: float) -> tuple[Any, list[float]]:
  """Depth LiGO from `cfg` (the small model) to `num_layers` layers."""
  one_hot = jnp.asarray(np.eye(cfg.num_layers, dtype=np.float32)[np.asarray(init_map)])
  maps = layout.map_leaves(
      lambda names, _: None if layout.layer_axis(names) is None else one_hot, cfg, params)

  def materialise(maps, small):
    def leaf(names, x, m):
      return x if m is None else _along_layers(x, layout.layer_axis(names), m)
    return layout.map_leaves(leaf, cfg, small, maps)

  big_cfg = cfg.replace(num_layers=num_layers)
  maps, losses = _fit(maps, materialise, params, big_cfg, batches, steps, lr)
  return jax.jit(materialise)(maps, params), losses


def _contract(x: jax.Array, axis: int, m: jax.Array, layer_ax: int | None) -> jax.Array:
  """Replaces `x`'s `axis` (size D) by D' through `m` (D', D), or per layer (L, D', D)."""
  xs = "abcdefghijklmnopqrstuvwxy"[:x.ndim]
  out = xs[:axis] + "z" + xs[axis + 1:]
  if m.ndim == 2:
    ms = "z" + xs[axis]
  elif layer_ax is not None:
    ms = xs[layer_ax] + "z" + xs[axis]
  else:
    raise ValueError(f"a per-layer width map cannot apply to a leaf without 'layers' "
                     f"({x.shape}).")
  return jnp.einsum(f"{xs},{ms}->{out}", x, m.astype(x.dtype), precision=HIGHEST)


def learn_width(params: Any, src: ModelConfig, dst: ModelConfig, batches: Iterable,
                steps: int, lr: float) -> tuple[Any, list[float]]:
  """Width LiGO from `src` to `dst` (same number of layers), starting at `direct`."""
  maps = width.plan(src, dst)
  coeffs = {}
  for name, m in maps.items():
    out = m.one_hot()
    inp = out / m.count[:, None]
    if name != EMBED:  # one map per layer
      out = np.broadcast_to(out, (src.num_layers,) + out.shape)
      inp = np.broadcast_to(inp, (src.num_layers,) + inp.shape)
    coeffs[name] = {"out": jnp.asarray(out), "in": jnp.asarray(inp)}
  tied = src.tie_embeddings

  def materialise(coeffs, small):
    def leaf(names, x):
      divided = width.divided_axes(names, maps, tied)
      for i, n in enumerate(names):
        if n in maps:
          m = coeffs[n]["in" if i in divided else "out"]
          x = _contract(x, i, m, layout.layer_axis(names))
      return x
    return layout.map_leaves(leaf, src, small)

  coeffs, losses = _fit(coeffs, materialise, params, dst, batches, steps, lr)
  return jax.jit(materialise)(coeffs, params), losses
