"""The distributed path checked by what it claims: sharding constraints in the lowered
step, per-device memory of the compiled step, the splash kernel under shard_map, and
the data position across a grow run's batch-size change (8 fake CPU devices)."""

import contextlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax import sharding
from growjax.growth import stages
from growjax.train import state as state_lib
from growjax import train
from tiny import grow_config


def _config(**mesh):
  c = config_lib.base_config("tiny")
  c.data.seq_len = 128
  c.train.global_batch_size = 16
  for k, v in dict(dict(data=1, fsdp=1, tensor=1), **mesh).items():
    c.mesh[k] = v
  return c


def _lowered_step(cfg, devices):
  setup = state_lib.build(cfg, devices)
  shape = (cfg.train.global_batch_size, cfg.data.seq_len)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=setup.batch_sharding)
           for k in ("inputs", "targets")}
  # No mesh context on purpose: the step must carry its own.
  return train.make_train_step(setup).lower(setup.abstract_state, batch)


def _constraints(lowered) -> int:
  return lowered.as_text().count("sharding_constraint")


def _temp_bytes(lowered) -> int:
  return lowered.compile().memory_analysis().temp_size_in_bytes


def test_activation_constraints_are_in_the_lowered_step_and_cut_memory(data_dir, monkeypatch):
  devices = jax.devices()
  sharded = _lowered_step(_config(fsdp=8), devices)
  one = _lowered_step(_config(), devices[:1])
  # 3 in attention, 1 in the MLP, 1 after each block, 1 after the embedding; counted
  # once in the scanned body, for the forward and backward passes.
  assert _constraints(sharded) >= 6
  assert _temp_bytes(sharded) <= _temp_bytes(one) / 4

  # The negative control: without the constraints (the fault this test guards against)
  # XLA keeps the whole batch's activations on every device.
  monkeypatch.setattr(sharding, "activation_sharding",
                      lambda mesh, rules: contextlib.nullcontext())
  unconstrained = _lowered_step(_config(fsdp=8), devices)
  assert _constraints(unconstrained) == 0
  assert _temp_bytes(unconstrained) > 2 * _temp_bytes(sharded)


def test_unrolled_layers_keep_the_constraints_and_the_memory_cut(data_dir):
  """scan_unroll=0 (the GPU fast path) drops the layer loop, not the activation sharding."""
  devices = jax.devices()
  unrolled = _config(fsdp=8)
  unrolled.model.scan_unroll = 0
  lowered = _lowered_step(unrolled, devices)
  single = _config()
  single.model.scan_unroll = 0
  scanned = _lowered_step(_config(fsdp=8), devices)
  whiles = lambda low: low.as_text().count("stablehlo.while")
  assert whiles(lowered) == whiles(scanned) - 2       # the layer scan, forward and backward
  assert _constraints(lowered) >= 6
  assert _temp_bytes(lowered) <= _temp_bytes(_lowered_step(single, devices[:1])) / 4


def test_tensor_parallel_activations_are_split_over_heads(data_dir):
  lowered = _lowered_step(_config(fsdp=4, tensor=2), jax.devices())
  text = lowered.as_text()
  # q/k/v and the MLP hidden state carry the tensor axis on their head / mlp dim.
  assert '"tensor"' in text and _constraints(lowered) >= 6


def test_splash_attention_runs_under_shard_map_on_a_mesh(data_dir):
  cfg = _config(fsdp=8)
  cfg.model.attention_impl = "splash"
  text = _lowered_step(cfg, jax.devices()).as_text()
  assert "manual_computation" in text or "shard_map" in text.lower()


def test_eval_step_carries_the_constraints_too(data_dir):
  cfg = _config(fsdp=8)
  setup = state_lib.build(cfg)
  batch = jax.ShapeDtypeStruct((16, 128), jnp.int32, sharding=setup.batch_sharding)
  lowered = train.make_eval_step(setup).lower(setup.abstract_state.params,
                                              {"inputs": batch, "targets": batch})
  assert _constraints(lowered) >= 3


@pytest.mark.parametrize("small_batch,large_batch", [(8, 4), (4, 8)])
def test_grow_run_continues_the_stream_at_the_next_unseen_window(tmp_path, data_dir,
                                                                 small_batch, large_batch):
  """The loader position is kept in windows: the grown checkpoint and the large stage
  pick up exactly where the small stage's batches ended, whatever the two batch sizes
  (tests/test_data.py checks that a position of N windows serves window N next)."""
  cfg = grow_config()
  cfg.train.steps = 7
  cfg.growth.small_steps = 3
  cfg.growth.small_global_batch_size = small_batch
  cfg.train.global_batch_size = large_batch
  for mesh in (cfg.mesh, cfg.growth.small_mesh):   # batch 4 over fsdp 4, tensor 2
    mesh.data, mesh.fsdp, mesh.tensor = 1, 4, 2
  stages.run(cfg, str(tmp_path))
  small_windows = 3 * small_batch
  for where, step, windows in (("small/checkpoints", 3, small_windows),
                               ("grown", 3, small_windows),
                               ("large/checkpoints", 7, small_windows + 4 * large_batch)):
    directory, latest = ckpt_lib.resolve(str(tmp_path / where))
    assert latest == step
    reader = ckpt_lib.Checkpoints(directory, use_async=False)
    data_state = reader.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore())).data
    reader.close()
    assert data_state == {"windows_consumed": windows}, where
