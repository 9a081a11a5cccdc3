"""Growth into experts: a dense model's MLPs upcycled into a mixture of experts, and an
MoE's experts multiplied. Pure functions on params trees at the small model's depth
(depth grows after, by the layer axis like every other leaf).

Dense -> MoE (`upcycle`). dst.expert_mlp_dim = m divides the dense mlp_dim M into
G = M / m segments of hidden units; expert x is segment x mod G (G = 1: every expert a
copy of the MLP, sparse upcycling; G > 1: granular upcycling). The rule that keeps the
function:
  * G = 1 with router 'topk_softmax': the router comes from dst's initialiser. The k
    chosen experts are identical and their weights sum to 1, so any router gives the
    dense MLP (to float32 rounding of the weighted sum).
  * otherwise the router is zero: every logit ties, top-k takes experts 0..k-1 (ties go
    to the lower index) with weight w = 1/k ('topk_softmax') or 1/X ('softmax_topk'),
    covering each segment k/G times; each expert's `down` is scaled by G / (k w), so the
    chosen experts sum to the dense MLP. Needs k a multiple of G (checked in
    `growjax.growth.spec`).
Drop-Upcycling (`drop_fraction` r > 0, Nakamura et al. 2025): after the copy, a random
fraction r of each expert's hidden units (their gate and up columns and down row) is
drawn afresh from a normal with the mean and std of the weight it replaces; it does not
keep the function (the change is measured and printed by `growjax grow`).

MoE -> MoE with c times the experts (`multiply`): expert j is a copy of src expert j mod
X, the router's column j a copy of column j mod X, and experts_per_token grows c times
too. Every src expert's c copies tie, so top-ck takes all copies of src's top k; each
copy's weight is 1/c of src's (both routers), so the function is kept.

Optimizer state (`moments`): the moments follow the params' copies (a copied expert's
moments are its source's; the scaled `down`'s first moment scales by the same factor,
its second by its square); the router's and every re-drawn unit's moments are zero.
These are the source's moments carried over, not the grown model's own gradients' (an
expert's gradient depends on its routing): an approximation; `reset` is exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from growjax.model import LAYERS, ModelConfig

UPCYCLE, MULTIPLY = "upcycle", "multiply"


def drop_key(rng: jax.Array) -> jax.Array:
  """The key of Drop-Upcycling's units, from the growth's rng (params and moments alike)."""
  return jax.random.fold_in(rng, 1)


def router_key(rng: jax.Array) -> jax.Array:
  return jax.random.fold_in(rng, 2)


def kind(src: ModelConfig, dst: ModelConfig) -> str | None:
  """Which expert growth turns src's MLPs into dst's (None: they are the same)."""
  if not dst.num_experts:
    return None
  if not src.num_experts:
    return UPCYCLE
  fields = ("num_experts", "experts_per_token", "expert_mlp_dim", "shared_mlp_dim",
            "moe_router")
  if all(getattr(src, f) == getattr(dst, f) for f in fields):
    return None
  return MULTIPLY


def segments(src: ModelConfig, dst: ModelConfig) -> int:
  """G: how many of dst's experts one dense MLP is cut into."""
  return src.mlp_dim // dst.expert_mlp_dim


def down_scale(src: ModelConfig, dst: ModelConfig) -> float:
  """The factor on each upcycled expert's `down` that makes the chosen experts sum to the
  dense MLP (see the module docstring)."""
  g, k, x = segments(src, dst), dst.experts_per_token, dst.num_experts
  if g == 1 and dst.moe_router == "topk_softmax":
    return 1.0
  w = 1.0 / k if dst.moe_router == "topk_softmax" else 1.0 / x
  return g / (k * w)


def random_router(src: ModelConfig, dst: ModelConfig) -> bool:
  return segments(src, dst) == 1 and dst.moe_router == "topk_softmax"


def _expert_index(src: ModelConfig, dst: ModelConfig) -> jax.Array:
  n = segments(src, dst) if kind(src, dst) == UPCYCLE else src.num_experts
  return jnp.arange(dst.num_experts) % n


def _split(src, dst, gate_LxExM, up_LxExM, down_LxMxE):
  """The dense MLP's segments as dst's experts: (L, E, X, m) twice and (L, X, m, E)."""
  l, e, m_dense = gate_LxExM.shape
  g, m = segments(src, dst), dst.expert_mlp_dim
  idx = _expert_index(src, dst)
  gate = gate_LxExM.reshape(l, e, g, m)[:, :, idx]
  up = up_LxExM.reshape(l, e, g, m)[:, :, idx]
  down = down_LxMxE.reshape(l, g, m, e)[:, idx]
  return gate, up, down


def _drop(key, gate, up, down, fraction: float):
  """Re-draws `fraction` of each expert's hidden units from N(mean, std) of each layer's
  weight (Drop-Upcycling); the same units of gate, up and down."""
  l, _, x, m = gate.shape
  n_drop = int(round(fraction * m))
  k_units, k_gate, k_up, k_down = jax.random.split(key, 4)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_units, (l, x, m)), axis=-1), axis=-1)
  drop_LxXxM = rank < n_drop

  def redraw(k, w, mask):
    axes = tuple(range(1, w.ndim))
    mean = jnp.mean(w, axis=axes, keepdims=True)
    std = jnp.std(w, axis=axes, keepdims=True)
    return jnp.where(mask, mean + std * jax.random.normal(k, w.shape, w.dtype), w)

  gate = redraw(k_gate, gate, drop_LxXxM[:, None])
  up = redraw(k_up, up, drop_LxXxM[:, None])
  down = redraw(k_down, down, drop_LxXxM[..., None])
  return gate, up, down, drop_LxXxM


def grow_experts(params: Any, src: ModelConfig, dst: ModelConfig, *, router_init=None,
                 key: jax.Array | None = None, drop_fraction: float = 0.0) -> Any:
  """src's params -> params with dst's experts (at src's depth). `router_init`: dst's
  initial router (L, E, X) at src's depth, used where `random_router`; `key` and
  `drop_fraction` for Drop-Upcycling."""
  what = kind(src, dst)
  if what is None:
    return params
  layers = dict(params[LAYERS])
  if what == UPCYCLE:
    mlp = layers.pop("mlp")
    gate, up, down = _split(src, dst, mlp["gate"], mlp["up"], mlp["down"])
    down = down * jnp.asarray(down_scale(src, dst), down.dtype)
    if drop_fraction:
      gate, up, down, _ = _drop(key, gate, up, down, drop_fraction)
    l, e = gate.shape[:2]
    router = (router_init if random_router(src, dst)
              else jnp.zeros((l, e, dst.num_experts), gate.dtype))
    layers["moe"] = {"router": router, "gate": gate, "up": up, "down": down}
  else:
    moe = dict(layers["moe"])
    idx = _expert_index(src, dst)
    moe.update(router=moe["router"][:, :, idx], gate=moe["gate"][:, :, idx],
               up=moe["up"][:, :, idx], down=moe["down"][:, idx])
    layers["moe"] = moe
  return dict(params, **{LAYERS: layers})


def moments(tree: Any, power: int, src: ModelConfig, dst: ModelConfig,
            drop_fraction: float = 0.0, key: jax.Array | None = None) -> Any:
  """A params-shaped optimizer moment (`power` 1: first, 2: second) of src -> of dst's
  experts (see the module docstring); re-drawn units (the same `key` as the params')
  and the upcycled router start at zero."""
  what = kind(src, dst)
  if what is None:
    return tree
  layers = dict(tree[LAYERS])
  if what == UPCYCLE:
    mlp = layers.pop("mlp")
    gate, up, down = _split(src, dst, mlp["gate"], mlp["up"], mlp["down"])
    down = down * jnp.asarray(down_scale(src, dst) ** power, down.dtype)
    if drop_fraction:
      _, _, _, drop = _drop(key, gate, up, down, drop_fraction)
      gate, up = (jnp.where(drop[:, None], 0, w) for w in (gate, up))
      down = jnp.where(drop[..., None], 0, down)
    l, e = gate.shape[:2]
    router = jnp.zeros((l, e, dst.num_experts), gate.dtype)
    layers["moe"] = {"router": router, "gate": gate, "up": up, "down": down}
    return dict(tree, **{LAYERS: layers})
  return grow_experts(tree, src, dst)
