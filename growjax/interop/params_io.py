"""A checkpoint's parameters for inference: resolve, read its metadata, restore the
params only (no optimizer state) straight into their sharding on a mesh.

Used by `growjax export-hf`, `eval`, `sample` and the lm-evaluation-harness
adapter. It does not train, and it does not restore the data position or the
optimizer state (`growjax.train.restore_or_init` does, for training).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import PartitionSpec as P

from growjax import checkpoint as ckpt_lib
from growjax.train import mask_ramp
from growjax import sharding
from growjax.model import ModelConfig, abstract_params, logical_axes


def parse_mesh(spec: str, flag: str = "--mesh") -> ml_collections.ConfigDict:
  """`'fsdp=-1,tensor=2'` -> config.mesh (data / fsdp / tensor; unnamed axes 1, fsdp -1
  when no axis is -1 and none is named). `''`: all devices on fsdp."""
  out = {a: 1 for a in sharding.MESH_AXES}
  named = {}
  for part in (p.strip() for p in (spec or "").split(",") if p.strip()):
    key, eq, value = part.partition("=")
    if not eq or key not in out:
      raise ValueError(f"{flag}={spec!r}: {part!r} is not AXIS=SIZE with AXIS one of "
                       f"{', '.join(sharding.MESH_AXES)} — e.g. {flag}=fsdp=-1,tensor=2")
    try:
      named[key] = int(value)
    except ValueError:
      raise ValueError(f"{flag}={spec!r}: size {value!r} of {key} is not an integer — e.g. "
                       f"{flag}=fsdp=-1,tensor=2") from None
  out.update(named)
  if -1 not in out.values() and "fsdp" not in named:
    out["fsdp"] = -1
  return ml_collections.ConfigDict(out)


@dataclasses.dataclass
class Loaded:
  """A checkpoint's params on a mesh, with what describes them."""
  model_cfg: ModelConfig
  params: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  meta: dict
  directory: str
  step: int


def param_shardings(model_cfg: ModelConfig, mesh, rules) -> Any:
  specs = jax.tree.map(lambda names: P(*names), logical_axes(model_cfg),
                       is_leaf=lambda x: isinstance(x, tuple))
  return sharding.logical_to_sharding(specs, mesh, rules)


def rules_of(meta: dict) -> tuple:
  rules = (meta.get("config") or {}).get("sharding_rules")
  return sharding.rules_from_config(rules) if rules else sharding.DEFAULT_RULES


def load(checkpoint: str, *, step: int | None = None, mesh_spec: str = "",
         field: str = "--checkpoint", model_overrides: dict | None = None) -> Loaded:
  """Restores the params of `checkpoint` (a checkpoints dir, a workdir or a step dir)
  onto a mesh of all devices (`mesh_spec`, e.g. 'fsdp=-1,tensor=2'). Only the
  params are read: the optimizer state stays on disk."""
  directory, step = ckpt_lib.resolve(checkpoint, step, field=field)
  meta = ckpt_lib.read_meta(directory, step)
  if "model" not in meta:
    raise ValueError(f"{field}={checkpoint!r}: {directory}/{step} has no model in its "
                     f"metadata — not a growjax checkpoint")
  mask_ramp.check_params_alone(meta, step, f"{field}={checkpoint!r}")
  model_cfg = ModelConfig(**meta["model"])
  if model_overrides:
    model_cfg = model_cfg.replace(**model_overrides)
  mesh = sharding.make_mesh(parse_mesh(mesh_spec))
  rules = rules_of(meta)
  shapes = jax.tree.map(lambda a: a.shape, abstract_params_unboxed(model_cfg))
  sharding.check_divisible(logical_axes(model_cfg), shapes, dict(mesh.shape), rules,
                           where=f"{field}={checkpoint!r} (model)")
  params = restore_params(directory, step, model_cfg, mesh, rules)
  return Loaded(model_cfg, params, mesh, rules, meta, directory, step)


def abstract_params_unboxed(model_cfg: ModelConfig) -> Any:
  import flax.linen as nn
  return nn.unbox(abstract_params(model_cfg))


def restore_params(directory: str, step: int, model_cfg: ModelConfig, mesh, rules) -> Any:
  """Only `state.params` of one step, each leaf restored into its sharding (orbax
  partial restore: the optimizer state is not read)."""
  shardings = param_shardings(model_cfg, mesh, rules)
  dtype = jax.numpy.dtype(model_cfg.param_dtype)
  target = {"params": jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, dtype, sharding=sh),
      abstract_params_unboxed(model_cfg), shardings)}
  path = epath.Path(ckpt_lib.absolute(directory)) / str(step) / "state"
  with ocp.PyTreeCheckpointer() as reader:
    out = reader.restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return out["params"]
