"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names in `growjax.model`;
`config.sharding_rules` says which mesh axis (`data`, `fsdp`, `tensor`) each
name is split over. Changing the parallelism is a config change, not a code
change. This module does not place data; `growjax.train` does.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from growjax.model import AXIS_FIELDS

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Default rules: batch over data x fsdp (x expert), weights' embed axis over fsdp (ZeRO-3
# style), heads / mlp / vocab over tensor (Megatron style), an MoE's experts over expert
# (expert parallelism: each device's tokens travel to their experts' device and back).
DEFAULT_RULES = (
    ("act_batch", ("data", "fsdp", "expert")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("experts", "expert"),
    ("expert_mlp", "tensor"),
    ("shared_mlp", "tensor"),
)


def num_slices(devices: Sequence[jax.Device]) -> int:
  """How many TPU slices `devices` span (Cloud TPU multi-slice: `device.slice_index`,
  joined by the data-centre network); 1 on one slice and off TPU."""
  return len({getattr(d, "slice_index", 0) or 0 for d in devices}) or 1


def mesh_shape(mesh_cfg: Any, num_devices: int, slices: int = 1) -> dict[str, int]:
  """Resolves `config.mesh` (one entry may be -1: 'the rest') against the device count.

  Over several slices `config.mesh` is one slice's mesh (resolved against its devices)
  and the `data` axis spans the slices too: data parallelism over the slow network
  between slices, everything else within a slice."""
  if slices > 1:
    if num_devices % slices:
      raise ValueError(f"{num_devices} devices do not split into {slices} equal slices.")
    shape = mesh_shape(mesh_cfg, num_devices // slices)
    return dict(shape, data=shape["data"] * slices)
  shape = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}  # expert: 1 unless given
  unknown = set(dict(mesh_cfg)) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; use {MESH_AXES}.")
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {free}.")
  if any(s == 0 or s < -1 for s in shape.values()):
    raise ValueError(f"config.mesh sizes must be positive or -1, got {shape}.")
  known = math.prod(s for s in shape.values() if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"config.mesh {shape}: {num_devices} devices are not divisible by "
                       f"the fixed axes' product {known}.")
    shape[free[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"config.mesh {shape} needs {math.prod(shape.values())} devices but "
                     f"{num_devices} are present; set one axis to -1 to take the rest.")
  return shape


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The run's mesh; over several TPU slices a hybrid mesh (`mesh_utils.
  create_hybrid_device_mesh`): each slice holds `config.mesh`, the slices stack on `data`."""
  devices = list(devices if devices is not None else jax.devices())
  slices = num_slices(devices)
  shape = mesh_shape(mesh_cfg, len(devices), slices)
  # Auto axes: XLA's SPMD partitioner places what the logical constraints leave open.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if slices > 1:
    from jax.experimental import mesh_utils
    ici = tuple(shape[a] // slices if a == "data" else shape[a] for a in MESH_AXES)
    dcn = tuple(slices if a == "data" else 1 for a in MESH_AXES)
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(grid, MESH_AXES, axis_types=auto)
  return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, devices=devices,
                       axis_types=auto)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: tuple) -> Iterator[None]:
  """Makes the model's `nn.with_logical_constraint` calls real, inside a traced function.

  Flax resolves logical constraints against the *abstract* mesh in context; the
  legacy `with mesh:` does not set one, and `jax.set_mesh` may not be entered
  inside `jax.jit`. Entering this inside every jitted function that runs the model
  ties the constraints to the function itself, whatever context its caller is in.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield


def rules_from_config(rules: Any) -> tuple:
  """Config stores rules as lists; flax wants tuples of (name, axis-or-axes-or-None)."""
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: tuple) -> Any:
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: tuple) -> NamedSharding:
  """Sharding of a `(batch, seq)` array: batch over the data-parallel axes."""
  spec = nn.logical_to_mesh_axes(("act_batch", "act_length"), rules)
  return NamedSharding(mesh, spec)


def process_rows(batch_sharding: NamedSharding, global_batch_size: int) -> np.ndarray:
  """Global batch rows that this process's devices hold, read off the sharding.

  With the batch split over `data x fsdp` and replicated over `tensor`, a process
  whose devices sit in one tensor group with another process's devices holds the
  same rows as that process; cutting the batch by process index instead would
  give each replica different rows.
  """
  index_map = batch_sharding.addressable_devices_indices_map((global_batch_size, 1))
  rows = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(global_batch_size)))
  return np.array(sorted(rows), dtype=np.int64)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(logical_axes: Any, shapes: Any, mesh_sizes: dict[str, int], rules: tuple,
                    where: str = "config.model") -> None:
  """Every sharded parameter dim must divide by its mesh axes; say which field to change
  (`growjax.model.AXIS_FIELDS` names the config field of each logical axis)."""
  rule_map = dict(rules)

  def check(names, shape):
    for name, dim in zip(names, shape):
      axes = rule_map.get(name)
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      n = math.prod(mesh_sizes[a] for a in axes)
      if dim % n:
        field = AXIS_FIELDS.get(name, name)
        raise ValueError(
            f"{where}.{field}={dim} does not divide over mesh axes {axes} of total size {n} "
            f"(logical axis '{name}'); change {where}.{field}, config.mesh, or the "
            f"'{name}' entry of config.sharding_rules.")

  jax.tree.map(check, logical_axes, shapes, is_leaf=lambda x: isinstance(x, tuple))
