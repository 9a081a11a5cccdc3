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
step is jitted. Given a placement (a concrete mesh and rules, see
`growjax.growth.placement`), each step is jitted onto that mesh: the small
params in their sharding, the batch split like the train step's, the map
coefficients split along their large axis, the materialised large params
constrained to the large model's shardings and the model run with its
activation constraints; the result comes out in the large model's sharding.
Memory: the width maps hold `2 * L * D' * D` numbers per internal axis, on top
of the large model and its gradients.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from growjax.model import loss as loss_lib
from growjax.growth import layout, placement, width
from growjax.model import (ACT_BATCH, ACT_LENGTH, EMBED, LAYERS, ModelConfig, Transformer,
                           head_kernel)

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


def _fit(maps: Any, maps_names: Any, materialise, small: Any, small_cfg: ModelConfig,
         cfg: ModelConfig, batches: Iterable, steps: int, lr: float,
         place: placement.Placement | None) -> tuple[Any, list[float]]:
  """Adam on the map coefficients only; returns them (materialised into `cfg`'s params,
  in its sharding under a placement) and the loss before each step.

  `materialise(maps, small)` builds `cfg`'s params; `maps_names` gives each map
  leaf's logical axes (None entries: unsharded), for its sharding on the mesh.
  """
  if batches is None:
    raise ValueError("method 'learn' needs learn_batches: an iterable of int32 token arrays "
                     "(batch, seq_len + 1) to train the expansion maps on.")
  tx = optax.adam(lr)

  def build(maps, small):
    with placement.entered(place):
      return placement.constrain_tree(cfg, materialise(maps, small))

  def step(maps, opt_state, small, tokens):
    with placement.entered(place):
      loss, grads = jax.value_and_grad(lambda m: lm_loss(build(m, small), cfg, tokens))(maps)
      updates, opt_state = tx.update(grads, opt_state, maps)
      return optax.apply_updates(maps, updates), opt_state, loss

  if place is None or not isinstance(place.mesh, Mesh):
    put_tokens = lambda t: t
    step_fn, final_fn = jax.jit(step), jax.jit(build)
    opt_state = tx.init(maps)
  else:
    repl = NamedSharding(place.mesh, P())
    is_names = lambda x: isinstance(x, tuple)
    maps_sh = jax.tree.map(lambda names, m: place.sharding(names, m.shape), maps_names, maps,
                           is_leaf=is_names)
    small_sh = place.shardings(small_cfg)
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, maps), maps_sh,
                                   transform_non_params=lambda _: repl,
                                   is_leaf=lambda x: isinstance(x, NamedSharding))
    tokens_sh = place.sharding((ACT_BATCH, ACT_LENGTH))
    put_tokens = lambda t: jax.device_put(t, tokens_sh)
    maps, small = jax.device_put(maps, maps_sh), jax.device_put(small, small_sh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(maps)
    step_fn = jax.jit(step, in_shardings=(maps_sh, opt_sh, small_sh, tokens_sh),
                      out_shardings=(maps_sh, opt_sh, repl), donate_argnums=(0, 1))
    final_fn = jax.jit(build, in_shardings=(maps_sh, small_sh),
                       out_shardings=place.shardings(cfg))
  losses = []
  for tokens in _take_steps(batches, steps):
    maps, opt_state, loss = step_fn(maps, opt_state, small, put_tokens(tokens))
    losses.append(loss)
  if steps > 0 and not losses:
    raise ValueError("learn_batches yielded no batch; give at least one int32 token array "
                     "(batch, seq_len + 1).")
  return final_fn(maps, small), [float(x) for x in losses]


def _along_layers(x: jax.Array, axis: int, m: jax.Array) -> jax.Array:
  """`y[..., i, ...] = sum_j m[i, j] x[..., j, ...]` over `axis`."""
  y = jnp.tensordot(m.astype(x.dtype), x, axes=([1], [axis]), precision=HIGHEST)
  return jnp.moveaxis(y, 0, axis)


def learn_depth(params: Any, cfg: ModelConfig, num_layers: int, init_map: Sequence[int],
                batches: Iterable, steps: int, lr: float,
                place: placement.Placement | None = None) -> tuple[Any, list[float]]:
  """Depth LiGO from `cfg` (the small model) to `num_layers` layers."""
  one_hot = np.eye(cfg.num_layers, dtype=np.float32)[np.asarray(init_map)]
  # One array per leaf (not one shared buffer): the sharded steps donate them.
  maps = layout.map_leaves(
      lambda p, _: None if layout.layer_axis(p) is None else jnp.array(one_hot),
      cfg, params)
  maps_names = jax.tree.map(lambda _: (None, None), maps)  # (L', L): tiny, replicated

  def materialise(maps, small):
    def leaf(p, x, m):
      if m is None:
        return x
      return placement.constrain(p.axes, _along_layers(x, layout.layer_axis(p), m))
    return layout.map_leaves(leaf, cfg, small, maps)

  big_cfg = cfg.replace(num_layers=num_layers)
  return _fit(maps, maps_names, materialise, params, cfg, big_cfg, batches, steps, lr, place)


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
                steps: int, lr: float,
                place: placement.Placement | None = None) -> tuple[Any, list[float]]:
  """Width LiGO from `src` to `dst` (same number of layers), starting at `direct`."""
  maps = width.plan(src, dst)
  coeffs, coeff_names = {}, {}
  for name, m in maps.items():
    out = m.one_hot()
    inp = out / m.count[:, None]
    names = (name, None)  # split along the large axis, like the weights it builds
    if name != EMBED:  # one map per layer
      out = np.broadcast_to(out, (src.num_layers,) + out.shape)
      inp = np.broadcast_to(inp, (src.num_layers,) + inp.shape)
      names = (LAYERS,) + names
    coeffs[name] = {"out": jnp.asarray(out), "in": jnp.asarray(inp)}
    coeff_names[name] = {"out": names, "in": names}
  tied = src.tie_embeddings

  def materialise(coeffs, small):
    def leaf(p, x):
      divided = width.divided_axes(p, maps, tied)
      for i, n in enumerate(p.axes):
        if n in maps:
          m = coeffs[n]["in" if i in divided else "out"]
          x = placement.constrain(p.axes, _contract(x, i, m, layout.layer_axis(p)))
      return x
    return layout.map_leaves(leaf, src, small)

  return _fit(coeffs, coeff_names, materialise, params, src, dst, batches, steps, lr, place)
