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

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax.train import optimizer as opt_lib
from growjax import sharding
from growjax.model import (ModelConfig, init_fp8_history, init_params, logical_axes,
                           uses_fp8_history)


@dataclasses.dataclass(frozen=True)
class TrainState:
  """`masks`: the MSG mask values of a grown run's ramp (`growjax.train.mask_ramp`), None
  otherwise. `fp8_history`: the amax histories of delayed FP8 scaling
  (`growjax.model.fp8`; not optimizer state: each step shifts in the amaxes it saw), None
  otherwise. A None field is no part of the pytree (not even an empty node), so a state
  without them has exactly the leaves, key paths and checkpoint tree it always had."""
  step: jax.Array
  params: Any
  opt_state: Any
  masks: Any = None
  fp8_history: Any = None

  def replace(self, **kw) -> "TrainState":
    return dataclasses.replace(self, **kw)


_OPTIONAL = ("masks", "fp8_history")


def _state_children(s: TrainState) -> tuple:
  return ("step", "params", "opt_state") + tuple(k for k in _OPTIONAL
                                                 if getattr(s, k) is not None)


jax.tree_util.register_pytree_with_keys(
    TrainState,
    lambda s: ([(jax.tree_util.GetAttrKey(k), getattr(s, k)) for k in _state_children(s)],
               _state_children(s)),
    lambda names, children: TrainState(**dict(zip(names, children))),
    flatten_func=lambda s: ([getattr(s, k) for k in _state_children(s)], _state_children(s)))


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
  config_lib.validate(cfg, len(devices), sharding.num_slices(devices))
  model_cfg = ModelConfig.from_config(cfg.model)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = sharding.rules_from_config(cfg.sharding_rules)
  axes = logical_axes(model_cfg)
  schedule = opt_lib.make_schedule(cfg.optimizer, cfg.train.steps)
  tx = opt_lib.make_optimizer(cfg.optimizer, schedule, axes, model_cfg)
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
  """Creates the state directly in its sharding: no full copy lands on one device. With
  delayed FP8 scaling, with zero (uncalibrated) amax histories."""
  def fresh(r):
    with sharding.activation_sharding(setup.mesh, setup.rules):
      return _fresh_state(setup.model_cfg, setup.tx, r)

  return with_fp8_history(setup, jax.jit(fresh, out_shardings=setup.state_shardings)(rng))


# `setup.abstract_state` is the model's checkpointable state as every tool reads and
# writes it (growth, import, export); a training run with delayed FP8 scaling adds its
# amax histories (replicated: a few floats per projection) on top.

def fp8_history_abstract(setup: Setup) -> Any:
  """The amax histories' shapes with their (replicated) shardings; None without delayed
  FP8 scaling."""
  if not uses_fp8_history(setup.model_cfg):
    return None
  return saved_fp8_history(setup.model_cfg, setup.model_cfg.fp8_amax_history,
                           sharding.replicated(setup.mesh))


def saved_fp8_history(model_cfg: ModelConfig, length: int, where) -> Any:
  """The abstract amax histories a delayed-FP8 run of `model_cfg` with histories of
  `length` steps holds (to restore its checkpoint), each placed as `where`."""
  cfg = model_cfg.replace(matmul_precision="fp8", fp8_scaling="delayed",
                          fp8_amax_history=length)
  shapes = jax.eval_shape(lambda: init_fp8_history(cfg))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                      shapes)


def with_fp8_history(setup: Setup, state: TrainState) -> TrainState:
  """`state` with the amax histories this run's model needs: zeros (uncalibrated) where
  it has none (a fresh, grown or imported model, a bf16 checkpoint), dropped where the
  model does not use them, and cut or zero-padded (newest first) where
  `fp8_amax_history` changed."""
  want = fp8_history_abstract(setup)
  if want is None:
    return state.replace(fp8_history=None)
  have = state.fp8_history
  repl = sharding.replicated(setup.mesh)

  def fit(w, h=None):
    n = w.shape[-1]
    if h is None:
      return jax.device_put(jnp.zeros(w.shape, w.dtype), repl)
    h = h[..., :n]
    return jax.device_put(jnp.pad(h, [(0, 0)] * (h.ndim - 1) + [(0, n - h.shape[-1])]), repl)

  if have is None or jax.tree.structure(have) != jax.tree.structure(want):
    return state.replace(fp8_history=jax.tree.map(fit, want))
  return state.replace(fp8_history=jax.tree.map(fit, want, have))


def fp8_calibrated(state: TrainState) -> bool:
  """Whether the amax histories hold any observation (zero histories are calibrated
  by one current-scaling pass before the first delayed step); True without them."""
  if state.fp8_history is None:
    return True
  return any(bool(np.any(to_host(h) != 0)) for h in jax.tree.leaves(state.fp8_history))


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


class _SavedFp8History:
  """A delayed-FP8 training checkpoint's amax histories, for readers that left them out
  of their abstract state (`fp8_history=None`): restored at the saved length (its meta's
  `fp8_history`) for the model of its meta, replicated like the step counter, so growth,
  export and evaluation read such a checkpoint; dropped again unless the trainer keeps
  them (`Checkpoints.restore(..., keep_fp8_history=True)`)."""

  def applies(self, abstract_state: Any) -> bool:
    return getattr(abstract_state, "fp8_history", 0) is None

  def abstract(self, abstract_state: Any, meta: dict) -> Any:
    length = int(meta.get(ckpt_lib.FP8_HISTORY_META, 0) or 0)
    if not length or "model" not in meta:
      return abstract_state
    return abstract_state.replace(fp8_history=saved_fp8_history(
        ModelConfig.from_config(meta["model"]), length, abstract_state.step.sharding))

  def drop(self, state: Any) -> Any:
    return state.replace(fp8_history=None)


ckpt_lib.SAVED_EXTRAS.append(_SavedFp8History())
