"""`grow`: the pure function from a small model's params to a large one's.

It resolves and checks the growth (`spec.resolve`), then `grow_by` grows
width first (at the small depth, the cheaper order), then depth, each jitted
and placed on the caller's mesh (`placement`); every leaf is handled by its
declaration in `growjax.model.PARAMS` (`layout`). The package docstring
(`growjax.growth`) lists the operators.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Iterable, Sequence

import jax

from growjax.growth import depth, experts, layout, learn, mup_carry, placement, width
from growjax.growth.spec import GrowthSpec, resolve
from growjax.model import ModelConfig, init_params, mup


class InexactGrowthWarning(UserWarning):
  """A function-preserving operator that, for these configs, moves the logits."""

def _first_layers(tree: Any, cfg: ModelConfig, n: int) -> Any:
  def leaf(p, x):
    a = layout.layer_axis(p)
    return x if a is None else jax.lax.slice_in_dim(x, 0, n, axis=a)
  return layout.map_leaves(leaf, cfg, tree)


def grow(params: Any, src: ModelConfig, dst: ModelConfig, method: str = "stack", *,
         width_method: str | None = None, layer_map: Sequence[int] | None = None,
         allow_inexact: bool = False, width_noise: float | None = None,
         rng: jax.Array | None = None, learn_batches: Iterable | None = None,
         learn_steps: int = 100, learn_lr: float = 1e-3, drop_fraction: float = 0.0,
         mesh: jax.sharding.Mesh | None = None, rules: Any = None) -> Any:
  """Params of `src` -> params of `dst`.

  Args:
    params: the small model's unboxed params.
    src, dst: the small and large configs (same vocab_size, head_dim,
      tie_embeddings; every other size equal or larger).
    method: depthwise operator (see the module docstring).
    width_method: widthwise operator; default: the family of `method`.
    layer_map: one small-layer index per large layer, -1 for a new layer
      (`zero` / `random` only). For `direct` it is required; for `zero` /
      `random` it places the old layers; for `learn` it is the starting map.
      None or empty: no explicit map.
    allow_inexact: accept width `direct` to an `embed_dim` that is not a whole
      multiple of src's (refused otherwise: the logits move by several percent)
      and silence the warning width `zero` gives when dst.norm_eps is not
      src.norm_eps * E / E' (see `growjax.growth.spec`).
    width_noise: width `split`'s noise std, relative to a copy's RMS (default 1.0).
    rng: key for the initialiser; needed by `zero` and `random` (new layers /
      units take their initial values, except the zeroed ones, from
      `init_params(dst, key)`, so they have the large model's init std) and by
      width `split` (its noise).
    learn_batches: iterable of int32 tokens (batch, seq_len + 1), for `learn`;
      a re-iterable source (a list) is gone round until `learn_steps` steps.
    learn_steps, learn_lr: Adam steps and learning rate of `learn` (each of
      the width and the depth phase, when both grow).
    drop_fraction: Drop-Upcycling's re-drawn fraction of each expert's units, when a
      dense src is upcycled into an MoE dst (`growjax.growth.experts`; inexact, warns
      unless allow_inexact).
    mesh, rules: the large model's mesh and logical-axis rules; default: those
      in context (`jax.set_mesh`, `nn.logical_axis_rules`; a given mesh with no
      rules anywhere takes `growjax.sharding.DEFAULT_RULES`), else none: no
      sharding constraints. `learn` needs a concrete mesh to place its steps.
  """
  spec = resolve(src, dst, method, width_method, layer_map, allow_inexact=allow_inexact,
                 width_noise=width_noise, drop_fraction=drop_fraction)
  if spec.inexact and not allow_inexact:
    what, fix = spec.inexact_message()
    warnings.warn(f"{what} — {fix} to grow exactly, or pass allow_inexact=True",
                  InexactGrowthWarning, stacklevel=2)
  return grow_by(spec, params, rng=rng, learn_batches=learn_batches, learn_steps=learn_steps,
                 learn_lr=learn_lr, mesh=mesh, rules=rules)


def grow_by(spec: GrowthSpec, params: Any, *, rng: jax.Array | None = None,
            learn_batches: Iterable | None = None, learn_steps: int = 100,
            learn_lr: float = 1e-3, mesh: jax.sharding.Mesh | None = None,
            rules: Any = None) -> Any:
  """`grow` for a spec `resolve` returned (the arguments after it are `grow`'s)."""
  src, dst = spec.src, spec.dst
  if spec.needs_rng and rng is None:
    raise ValueError(f"method={spec.method!r} / width_method={spec.width_method!r} draws "
                     f"new weights from the initialiser — pass rng=jax.random.key(seed)")
  if rng is None:
    rng = jax.random.key(0)  # unused: nothing random is drawn
  width_key, depth_key = jax.random.split(rng)
  place = placement.resolve(mesh, rules)
  static_place = place.abstract if place is not None else None

  if spec.width_method == "learn":
    params, _ = learn.learn_width(params, src, spec.mid, learn_batches, learn_steps, learn_lr,
                                  place=place)
  elif spec.width_method is not None:
    params = _widen(params, width_key, spec, static_place)
  if spec.experts is not None:
    params = _expertise(params, rng, spec, static_place)
  if spec.layer_map is not None and spec.method == "learn":
    params, _ = learn.learn_depth(params, spec.mid, dst.num_layers, spec.layer_map,
                                  learn_batches, learn_steps, learn_lr, place=place)
  elif spec.layer_map is not None:
    params = _deepen(params, depth_key, spec, static_place)
  if mup.is_mup(dst):   # what the operator does to μP's multipliers: `mup_carry`
    params = mup_carry.carry(params, src, dst, spec.method, spec.layer_map is not None)
  return params


# Jitted so each leaf's gather, rescale and select fuse into one pass; inside a
# caller's jit they are simply inlined. The placement is a static argument (not
# read from context while tracing): flax's rules are no part of jax's trace cache
# key, so a trace made without them must never serve a call made with them.
# Under a placement `init_params` unboxes into constrained leaves (flax applies
# each parameter's logical sharding): the fresh values are made sharded.

@functools.partial(jax.jit, static_argnums=(2, 3))
def _widen(params: Any, key: jax.Array, spec: GrowthSpec,
           place: placement.Placement | None) -> Any:
  with placement.entered(place):
    fresh = None
    if spec.width_method in ("zero", "random"):
      # dst's own initialiser: its output-projection std depends on dst.num_layers.
      fresh = _first_layers(init_params(spec.dst, key), spec.dst, spec.src.num_layers)
      fresh = placement.constrain_tree(spec.mid, fresh)
    return width.grow_width(params, spec.src, spec.mid, spec.width_method, fresh, key=key,
                            noise=spec.width_noise)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _expertise(params: Any, rng: jax.Array, spec: GrowthSpec,
               place: placement.Placement | None) -> Any:
  with placement.entered(place):
    router = None
    if spec.experts == experts.UPCYCLE and experts.random_router(spec.src, spec.dst):
      fresh = _first_layers(init_params(spec.dst, experts.router_key(rng)), spec.dst,
                            spec.src.num_layers)
      router = fresh["layers"]["moe"]["router"]
    grown = experts.grow_experts(params, spec.src, spec.mid, router_init=router,
                                 key=experts.drop_key(rng), drop_fraction=spec.drop_fraction)
    return placement.constrain_tree(spec.mid, grown)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _deepen(params: Any, key: jax.Array, spec: GrowthSpec,
            place: placement.Placement | None) -> Any:
  with placement.entered(place):
    fill = init_params(spec.dst, key) if depth.NEW in spec.layer_map else None
    grown = depth.expand_layers(params, spec.mid, spec.layer_map, fill,
                                zero_writers=spec.zero_writers)
    return placement.constrain_tree(spec.dst, grown)
