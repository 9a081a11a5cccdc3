"""Optimizer state across growth: start fresh (the paper) or grow the moments too.

`reset` is `tx.init(grown_params)`: zero moments and a step count of zero
(bias correction restarts; `growjax.train.optimizer.set_schedule_step` keeps the LR
schedule going). `grow` maps every params-shaped part of any optax state with
the operator that grew the params, found by `optax.tree_map_params`, and keeps
everything else (step counts) as it was. Depth: moments of a copied layer are
copied, new layers get zero. Width: moments follow the gradient (see
`width.moment_fn`): for `direct`, a copied output unit's gradient is 1/c of
the small unit's, so first moments scale by 1/c and second moments by 1/c^2,
while divided input-side copies keep theirs; new units get zero. The grown
moments are thus those of the grown model's own gradients (tested).

What that buys. Depth (copied and `zero` layers): one Adam step of the grown
model equals the small model's step wherever the function is kept (tested).
Width `direct`: it does not. Adam's update is scale-free, so each of the c
input-side copies of a weight (each holding 1/c of it) moves by the small
model's full step, and together they move the function c times as far along
that input (tested; a tiny model at lr 3e-3: 10.6% max relative logit
difference from the small model's step, itself an 18.7% change). Scaling
those copies' second moments by c^2 would shrink the first step's mismatch
(to 0.5% there) but not remove it (the fresh gradient enters unscaled) and
fades within ~1/(1 - b2) steps; it is not done: the moments stay the grown
model's own.

Second moments are recognised by their optax field name (`nu` of Adam,
AdamW, RMSProp, AdaBelief; `sum_of_squares` of Adagrad); every other
params-shaped state (momentum, `mu`) is treated as a first moment. `learn`
has no moment mapping (its maps are dense): use `reset`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import optax

from growjax.growth import depth, experts, layout, mup_carry, spec as spec_lib, width
from growjax.model import LAYERS, ModelConfig

SECOND_MOMENT_FIELDS = ("nu", "sum_of_squares")


@dataclasses.dataclass
class _Tagged:
  """A state leaf and the power of the gradient it accumulates (1 or 2)."""
  value: Any
  power: int


def _power(path) -> int:
  """2 under an optax state field named like a second moment (not a params dict key)."""
  fields = {k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)}
  return 2 if fields & set(SECOND_MOMENT_FIELDS) else 1


def grow_opt_state(opt_state: Any, tx: optax.GradientTransformation, src: ModelConfig,
                   dst: ModelConfig, method: str = "stack", *,
                   width_method: str | None = None, layer_map: Sequence[int] | None = None,
                   allow_inexact: bool = False, mode: str = "reset", params: Any = None,
                   drop_fraction: float = 0.0, rng: jax.Array | None = None) -> Any:
  """The small model's `opt_state` (of `tx`) -> a state for the grown params.

  `method`, `width_method`, `layer_map` and `allow_inexact` must be those given to
  `grow`. `mode='reset'` needs `params` (the grown params) and returns
  `tx.init(params)`; `mode='grow'` maps the moments and carries the step count.
  """
  spec = spec_lib.resolve(src, dst, method, width_method, layer_map,
                          allow_inexact=allow_inexact, drop_fraction=drop_fraction)
  spec.check_opt_state(mode)
  if mode == "reset":
    if params is None:
      raise ValueError("grow_opt_state(mode='reset') needs params=the grown params — it "
                       "returns tx.init(params)")
    return tx.init(params)
  return grow_moments(spec, opt_state, tx, rng)


def _params_shaped(x) -> bool:
  return isinstance(x, dict) and LAYERS in x


def _expert_moments(spec: spec_lib.GrowthSpec, opt_state: Any, rng: jax.Array | None) -> Any:
  """An expert growth's moments: the tree changes (mlp -> moe), so every params-shaped
  subtree of the state is mapped whole (`experts.moments`), then by the depth map."""
  if spec.drop_fraction and rng is None:
    raise ValueError("grow_moments: Drop-Upcycling's moments need rng=the growth's rng")
  key = experts.drop_key(rng) if spec.drop_fraction else None
  deepen = depth.layers_fn(spec.layer_map) if spec.layer_map is not None else None

  def grow_tree(path, tree):
    if not _params_shaped(tree):
      return tree
    m = experts.moments(tree, _power(path), spec.src, spec.mid, spec.drop_fraction, key)
    if deepen is None:
      return m
    return layout.map_leaves(lambda p, x: deepen(p, x, None), spec.mid, m)

  return jax.tree_util.tree_map_with_path(grow_tree, opt_state, is_leaf=_params_shaped)


def grow_moments(spec: spec_lib.GrowthSpec, opt_state: Any,
                 tx: optax.GradientTransformation, rng: jax.Array | None = None) -> Any:
  """`grow_opt_state(mode='grow')` for a spec `resolve` returned (not `learn`). `rng`:
  the growth's (Drop-Upcycling re-draws units by it; their moments start at zero)."""
  if spec.experts is not None:
    return _expert_moments(spec, opt_state, rng)
  src = spec.src
  widen = width.moment_fn(src, spec.mid, spec.width_method) if spec.width_method else None
  deepen = depth.layers_fn(spec.layer_map) if spec.layer_map is not None else None
  factor = mup_carry.factor_fn(src, spec.dst, spec.method, spec.layer_map is not None)

  def grow_leaf(tagged, p):
    if not isinstance(tagged, _Tagged):  # optax.MaskedNode
      return tagged
    m = tagged.value
    if widen is not None:
      m = widen(p, m, tagged.power)
    if deepen is not None:
      m = deepen(p, m, None)
    f = mup_carry.moment_factor(p, tagged.power, factor)   # μP: a leaf scaled by c
    return m if f == 1.0 else m * f

  tagged = jax.tree_util.tree_map_with_path(lambda p, x: _Tagged(x, _power(p)), opt_state)
  untag = lambda t: jax.tree.map(lambda x: x.value, t, is_leaf=lambda x: isinstance(x, _Tagged))
  return optax.tree_map_params(
      tx, grow_leaf, tagged, layout.params_of(src), transform_non_params=untag,
      is_leaf=lambda x: isinstance(x, (_Tagged, optax.MaskedNode)))
