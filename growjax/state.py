"""The train state and everything a config fixes about it, apart from the loop.

`build` turns a config into a `Setup`: mesh, model, optimizer, the state's
shardings and abstract (shape + sharding) form. `init_state` creates the state
already sharded. Offline growth, the memory planner and the trainer all start
here; none of them needs data, so nothing here reads or validates the corpus.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import config as config_lib
from growjax import optimizer as opt_lib
from growjax import sharding
from growjax.model import ModelConfig, init_params, logical_axes


@dataclasses.dataclass(frozen=True)
class TrainState:
  """`masks`: the MSG mask values of a grown run's ramp (`growjax.mask_ramp`), None
  otherwise. A None `masks` is no part of the pytree (not even an empty node), so a
  mask-free state has exactly the leaves, key paths and checkpoint tree it always had."""
  step: jax.Array
  params: Any
  opt_state: Any
  masks: Any = None

  def replace(self, **kw) -> "TrainState":
    return dataclasses.replace(self, **kw)


def _state_children(s: TrainState) -> tuple:
  return ("step", "params", "opt_state") + (() if s.masks is None else ("masks",))


jax.tree_util.register_pytree_with_keys(
    TrainState,
    lambda s: ([(jax.tree_util.GetAttrKey(k), getattr(s, k)) for k in _state_children(s)],
               None),
    lambda _, children: TrainState(*children),
    flatten_func=lambda s: ([getattr(s, k) for k in _state_children(s)], None))


@dataclasses.dataclass
class Setup:
  """Everything derived from a config that the step functions need."""
  cfg: ml_collections.ConfigDict
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  rules: tuple
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  abstract_state: TrainState        # ShapeDtypeStructs carrying their shardings
  state_shardings: TrainState
  batch_sharding: NamedSharding

  @property
  def tokens_per_step(self) -> int:
    return self.cfg.train.global_batch_size * self.cfg.data.seq_len


def build(cfg: ml_collections.ConfigDict, devices=None) -> Setup:
  devices = list(devices if devices is not None else jax.devices())
  config_lib.validate(cfg, len(devices))
  model_cfg = ModelConfig.from_config(cfg.model)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = sharding.rules_from_config(cfg.sharding_rules)
  axes = logical_axes(model_cfg)
  schedule = opt_lib.make_schedule(cfg.optimizer, cfg.train.steps)
  tx = opt_lib.make_optimizer(cfg.optimizer, schedule, axes)
  state_shardings, abstract_state = state_layout(model_cfg, tx, mesh, rules)
  return Setup(cfg, model_cfg, mesh, rules, schedule, tx, abstract_state, state_shardings,
               sharding.batch_sharding(mesh, rules))


def state_layout(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh, rules):
  """Shardings of the train state and its abstract (shape + sharding) form."""
  specs = jax.tree.map(lambda names: P(*names), logical_axes(model_cfg),
                       is_leaf=lambda x: isinstance(x, tuple))
  param_sh = sharding.logical_to_sharding(specs, mesh, rules)
  shapes = jax.eval_shape(
      lambda: _fresh_state(model_cfg, tx, jax.random.key(0)))
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, shapes.opt_state, param_sh,
                                 transform_non_params=lambda _: repl,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))
  state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, state_sh)
  return state_sh, abstract


def _fresh_state(model_cfg: ModelConfig, tx, rng) -> TrainState:
  params = init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_state(setup: Setup, rng: jax.Array) -> TrainState:
  """Creates the state directly in its sharding: no full copy lands on one device."""
  def fresh(r):
    with sharding.activation_sharding(setup.mesh, setup.rules):
      return _fresh_state(setup.model_cfg, setup.tx, r)

  return jax.jit(fresh, out_shardings=setup.state_shardings)(rng)


def to_host(tree: Any) -> Any:
  """Replicated device values -> numpy, also when the mesh spans several processes
  (where `jax.device_get` of a global array is not allowed)."""
  return jax.tree.map(
      lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def run_meta(setup: Setup) -> dict:
  return {"model": dataclasses.asdict(setup.model_cfg),
          "config": json_safe(setup.cfg.to_dict()),
          "global_batch_size": int(setup.cfg.train.global_batch_size),
          "seq_len": int(setup.cfg.data.seq_len)}


def json_safe(obj):
  if isinstance(obj, dict):
    return {str(k): json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  return str(obj)
