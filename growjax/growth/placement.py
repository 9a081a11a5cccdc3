"""Where growth puts its arrays: on the large model's mesh, each leaf in its own sharding.

Growth operators are pure functions of pytrees and need no mesh. Given one (a
`Placement`: a mesh and the logical-axis rules, passed to `grow` or read from
`jax.set_mesh` + `flax.linen.logical_axis_rules` in context), every jitted
operator enters it while it traces and constrains each intermediate leaf (the
fresh initialiser output, every gathered, widened or stacked leaf) to the
sharding that leaf's logical axis names give. XLA then partitions the growth
like the train step: per-device memory falls as devices are added, and no
leaf of the large model is ever whole on one device. Without a placement the
constraints are no-ops and the results are bit-identical.

This module decides nothing about *what* grows (see `width`, `depth`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from growjax import sharding
from growjax.growth import layout
from growjax.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class Placement:
  """A mesh (concrete, or abstract inside a trace) and the rules naming its axes."""
  mesh: Mesh | AbstractMesh
  rules: tuple

  @property
  def abstract(self) -> "Placement":
    """The hashable form jitted operators take as a static argument."""
    mesh = self.mesh.abstract_mesh if isinstance(self.mesh, Mesh) else self.mesh
    return Placement(mesh, self.rules)

  def sharding(self, names: tuple[str | None, ...],
               shape: tuple[int, ...] | None = None) -> NamedSharding:
    """The NamedSharding of a leaf with logical axes `names` (needs a concrete mesh).

    With `shape`, a dim that does not divide over its mesh axes stays unsharded
    (for arrays outside the model, such as `learn`'s maps, nobody validated).
    """
    spec = nn.logical_to_mesh_axes(names, self.rules)
    if shape is not None:
      def fits(axes, dim):
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        return dim % math.prod(self.mesh.shape[a] for a in axes) == 0
      spec = P(*(a if a is None or fits(a, d) else None for a, d in zip(spec, shape)))
    return NamedSharding(self.mesh, spec)

  def shardings(self, cfg: ModelConfig) -> Any:
    """Params-shaped tree of `cfg`'s parameter shardings."""
    return jax.tree.map(lambda p: self.sharding(p.axes), layout.params_of(cfg))


def _tuple_rules(rules: Any) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def resolve(mesh: Mesh | AbstractMesh | None = None, rules: Any = None) -> Placement | None:
  """The placement growth runs under: the arguments, else the context's; None without one.

  The context is `jax.set_mesh(mesh)` (outside jit: the concrete mesh; inside a
  caller's jit: its abstract mesh) and `nn.logical_axis_rules(rules)`. A mesh
  passed without rules, with none in context, takes `sharding.DEFAULT_RULES`; a
  mesh from context without rules places nothing.
  """
  given = mesh is not None
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
      try:
        concrete = jax.sharding.get_mesh()
        mesh = mesh if concrete.empty else concrete
      except ValueError:  # inside a trace only the abstract mesh exists
        pass
  if mesh is None or mesh.empty:
    return None
  if rules is None:
    rules = nn.get_logical_axis_rules() or (sharding.DEFAULT_RULES if given else ())
  if not rules:
    return None
  return Placement(mesh, _tuple_rules(rules))


@contextlib.contextmanager
def entered(place: Placement | None) -> Iterator[None]:
  """Inside a traced function: makes `constrain` real (a no-op context for None)."""
  if place is None:
    yield
    return
  mesh = place.abstract.mesh
  with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(place.rules):
    yield


def constrain(names: tuple[str, ...], x: Any) -> Any:
  """`x` constrained to the sharding of logical axes `names` (no-op outside a placement)."""
  if not hasattr(x, "ndim") or x.ndim != len(names):  # an optax.MaskedNode, a scalar
    return x
  return nn.with_logical_constraint(x, names)


def constrain_tree(cfg: ModelConfig, tree: Any) -> Any:
  """Every leaf of a params-shaped `tree` of `cfg` constrained to its sharding."""
  return layout.map_leaves(lambda p, x: constrain(p.axes, x), cfg, tree)
