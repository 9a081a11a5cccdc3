"""Trainer: sharded == single-device steps, grad accumulation, exact resume, checkpoints
across meshes, and early, named errors for bad configs."""


import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax.train import state as state_lib
from growjax import train
from tiny import random_batches, tiny_config


def _run_steps(cfg, devices, batches):
  setup = state_lib.build(cfg, devices)
  state = state_lib.init_state(setup, jax.random.key(0))
  step = train.make_train_step(setup)
  losses = []
  with jax.set_mesh(setup.mesh):
    for b in batches:
      state, m = step(state, train.to_global(b, setup.batch_sharding))
      losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params)


def test_sharded_step_equals_single_device(data_dir):
  batches = random_batches(3)
  one_losses, one_params = _run_steps(tiny_config(), jax.devices()[:1], batches)
  eight_losses, eight_params = _run_steps(tiny_config(data=2, fsdp=2, tensor=2), jax.devices(),
                                          batches)
  np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               eight_params, one_params)
  assert one_losses[-1] < one_losses[0]


def test_grad_accumulation_matches_full_batch(data_dir):
  batches = random_batches(2)
  full, _ = _run_steps(tiny_config(fsdp=2), jax.devices()[:2], batches)
  cfg = tiny_config(fsdp=2)
  cfg.train.grad_accum_steps = 2
  accum, _ = _run_steps(cfg, jax.devices()[:2], batches)
  np.testing.assert_allclose(accum, full, rtol=1e-5)


def test_resume_gives_identical_losses(tmp_path, data_dir):
  # fsdp over all 8 devices: test_reliability's run, so a session compiles its steps once.
  cfg = tiny_config(fsdp=-1)
  devices = jax.devices()
  straight = train.train(cfg, str(tmp_path / "a"), devices=devices)
  first = train.train(cfg, str(tmp_path / "b"), devices=devices, stop_after_steps=3)
  assert sorted(first["loss"]) == [1, 2, 3]
  assert ckpt_lib.Checkpoints(str(tmp_path / "b/checkpoints")).latest_step() == 3
  second = train.train(cfg, str(tmp_path / "b"), devices=devices)
  assert sorted(second["loss"]) == [4, 5, 6, 7, 8]
  resumed = {**first["loss"], **second["loss"]}
  assert resumed == straight["loss"]  # bit-exact
  assert second["eval_loss"] == {k: v for k, v in straight["eval_loss"].items() if k > 3}
  assert straight["eval_loss"][8] < straight["eval_loss"][4]


def test_checkpoint_restores_exactly_onto_another_mesh(tmp_path, data_dir):
  cfg8 = tiny_config(data=2, fsdp=2, tensor=2)
  setup8 = state_lib.build(cfg8, jax.devices())
  state = state_lib.init_state(setup8, jax.random.key(7))
  ck = ckpt_lib.Checkpoints(str(tmp_path / "ck"), use_async=False)
  ck.save(5, state, {"pos": 5}, {"note": "x"}, force=True)
  ck.wait()
  expected = jax.device_get(state)
  for mesh, devices in ((dict(fsdp=8), jax.devices()), (dict(tensor=2, fsdp=2), jax.devices()[:4]),
                        ({}, jax.devices()[:1])):
    setup = state_lib.build(tiny_config(**mesh), devices)
    restored, data_state, meta = ck.restore(5, setup.abstract_state)
    assert data_state == {"pos": 5} and meta == {"note": "x"}
    leaves = jax.tree.leaves(restored.params)
    assert all(l.sharding.mesh.shape == setup.mesh.shape for l in leaves)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), jax.device_get(restored),
                 expected)


def test_incomplete_checkpoint_is_never_resumed(tmp_path):
  d = tmp_path / "checkpoints"
  (d / "7.orbax-checkpoint-tmp-123").mkdir(parents=True)
  with pytest.raises(ValueError, match="no complete"):
    ckpt_lib.resolve(str(d))


@pytest.mark.parametrize("change,match", [
    (lambda c: setattr(c.train, "global_batch_size", 5), "global_batch_size=5.*data-parallel"),
    (lambda c: setattr(c.model, "num_heads", 6), "num_heads"),
    (lambda c: setattr(c.model, "mlp_dim", 102), "mlp_dim=102 does not divide"),
    (lambda c: setattr(c.train, "init_from", "/no/such/ckpt"), "init_from"),
    (lambda c: setattr(c.train, "loss_chunk_len", 5), "loss_chunk_len"),
])
def test_bad_config_fails_before_compute(change, match, data_dir):
  cfg = tiny_config(data=2, tensor=4)
  cfg.model.num_kv_heads = 4
  change(cfg)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(cfg, 8)


def test_splash_attention_step_equals_xla_on_a_mesh(data_dir):
  """The TPU splash kernel (Pallas interpreter on CPU) inside shard_map on a
  data x fsdp x tensor mesh gives the XLA attention's loss and update."""
  batches = random_batches(1, t=128)
  results = {}
  for impl in ("xla", "splash"):
    cfg = tiny_config(data=2, fsdp=2, tensor=2)
    cfg.data.seq_len, cfg.train.loss_chunk_len = 128, 128
    cfg.model.attention_impl = impl
    results[impl] = _run_steps(cfg, jax.devices(), batches)
  np.testing.assert_allclose(results["splash"][0], results["xla"][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               results["splash"][1], results["xla"][1])
