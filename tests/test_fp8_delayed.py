"""Delayed FP8 scaling (`config.model.fp8_scaling='delayed'`, growjax.model.fp8).

Histories filled from this step's tensors reproduce current scaling exactly; each
projection reports the amax it saw through the gradient (a shared input once, micro-
batches by max); the histories live in the train state, survive checkpoints (resume is
bit-identical), are calibrated once where they start at zero, and every reader of the
model's state (growth, export, evaluation) opens a checkpoint that holds them.
"""

import json
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax.model import fp8
from growjax.train import state as state_lib
from growjax import train
from growjax.train import memory_probe
from growjax.model import ModelConfig, Transformer, init_fp8_history, init_params

from tiny import random_batches, tiny_config

CFG = ModelConfig(vocab_size=64, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=128, dtype="float32", attention_impl="xla",
                  remat_policy="dots", matmul_precision="fp8", fp8_scaling="delayed",
                  fp8_amax_history=4)
TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 32)).astype(np.int32)


def _grads(cfg, params, history, calibrate=False):
  def loss(p, h):
    variables = {"params": p} if h is None else {"params": p, fp8.HISTORY_COLLECTION: h}
    logits = Transformer(cfg).apply(variables, TOKENS)
    return jax.nn.logsumexp(logits, -1).mean() - logits[..., 0].mean()
  if calibrate:
    with fp8.calibrating():
      return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, history)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, history)


def test_histories_of_this_step_reproduce_current_scaling_exactly():
  params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))
  zero = init_fp8_history(CFG)
  assert set(zero["layers"]["attn"]) == {"qkv_x", "q_g", "k_g", "v_g", "o_x", "o_g"}
  assert set(zero["layers"]["mlp"]) == {"gate_up_x", "gate_g", "up_g", "down_x", "down_g"}
  assert all(h.shape == (2, 4) for h in jax.tree.leaves(zero))   # (layers, history)
  _, seen = _grads(CFG, params, zero, calibrate=True)
  history = fp8.push_history(zero, seen)
  g_delayed, seen_again = _grads(CFG, params, history)
  g_current, _ = _grads(CFG.replace(fp8_scaling="current"), params, None)
  jax.tree.map(np.testing.assert_array_equal, g_delayed, g_current)
  jax.tree.map(np.testing.assert_array_equal, seen_again, seen)
  for h in jax.tree.leaves(seen):          # the amax in slot 0, nothing elsewhere
    assert (np.asarray(h[:, 0]) > 0).all() and not np.asarray(h[:, 1:]).any()
  # Without histories (eval, sampling) the model scales by the current amax.
  out = Transformer(CFG).apply({"params": params}, TOKENS)
  ref = Transformer(CFG.replace(fp8_scaling="current")).apply({"params": params}, TOKENS)
  np.testing.assert_array_equal(out, ref)


def test_stale_histories_change_the_rounding_not_the_result_much():
  params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))
  zero = init_fp8_history(CFG)
  _, seen = _grads(CFG, params, zero, calibrate=True)
  stale = jax.tree.map(lambda h: 4.0 * h, fp8.push_history(zero, seen))  # 4x too large
  g_stale, _ = _grads(CFG, params, stale)
  g_current, _ = _grads(CFG.replace(fp8_scaling="current"), params, None)
  for a, b in zip(jax.tree.leaves(g_stale), jax.tree.leaves(g_current)):
    assert np.isfinite(np.asarray(a)).all()
    assert np.abs(a - b).max() <= 0.1 * np.abs(b).max() + 1e-6


def test_a_shared_input_reports_its_amax_once():
  x = jax.random.normal(jax.random.key(1), (8, 16)) * 3.0
  w1, w2 = (jax.random.normal(jax.random.key(k), (16, 4)) for k in (2, 3))
  hist = jnp.zeros((4,), jnp.float32)

  def f(h):
    y1 = fp8.delayed_einsum("te,ef->tf", x, w1, h, hist)
    y2 = fp8.delayed_einsum("te,ef->tf", x, w2, h, hist, observe_x=False)
    return (y1 + y2).sum()
  with fp8.calibrating():
    seen = jax.grad(f)(hist)
  np.testing.assert_array_equal(seen, [float(jnp.abs(x).max()), 0, 0, 0])


def _cone(eqns, var) -> set:
  """The primitives `var` depends on inside one jaxpr (its backward cone); a max
  reduction is named with its operand's shape."""
  producer = {id(o): e for e in eqns for o in e.outvars}
  seen, todo, prims = set(), [var], set()
  while todo:
    v = todo.pop()
    e = producer.get(id(v))
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    prims.add(e.primitive.name + ("" if e.primitive.name != "reduce_max" else
                                  f"{tuple(e.invars[0].aval.shape)}"))
    todo.extend(x for x in e.invars if not isinstance(x, jax.extend.core.Literal))
  return prims


def _float8_casts(jaxpr):
  return [e for e in jaxpr.eqns if e.primitive.name == "convert_element_type"
          and "float8" in str(e.params["new_dtype"])]


def test_the_delayed_cast_does_not_wait_for_an_amax_of_its_own_tensor():
  # Why delayed scaling is faster: its cast to float8 depends on the history, not on a
  # max-reduction of the tensor being cast, so XLA can fuse it into the op that makes
  # the tensor. Current scaling's cast needs that reduction first.
  x = jnp.ones((8, 16), jnp.bfloat16)
  w = jnp.ones((16, 4), jnp.bfloat16)
  hist = jnp.ones((4,), jnp.float32)
  fwd = jax.make_jaxpr(fp8._delayed_fwd, static_argnums=(0, 5, 6, 7, 8))(
      "te,ef->tf", x, w, hist, hist, jnp.dtype(jnp.bfloat16), False, True, None).jaxpr
  [x_cast, w_cast] = _float8_casts(fwd)
  assert "reduce_max(8, 16)" not in _cone(fwd.eqns, x_cast.outvars[0])  # x: the history's
  assert "reduce_max(4,)" in _cone(fwd.eqns, x_cast.outvars[0])
  assert "reduce_max(16, 4)" in _cone(fwd.eqns, w_cast.outvars[0])      # w: current scaling
  cur = jax.make_jaxpr(fp8._fp8_einsum_fwd, static_argnums=(0, 3, 4))(
      "te,ef->tf", x, w, jnp.dtype(jnp.bfloat16), None).jaxpr
  assert [r for c in _float8_casts(cur) for r in _cone(cur.eqns, c.outvars[0])
          if r.startswith("reduce_max")] == ["reduce_max(8, 16)", "reduce_max(16, 4)"]
  with fp8.calibrating():   # calibration scales by this step's amax, like current scaling
    cal = jax.make_jaxpr(fp8._delayed_fwd, static_argnums=(0, 5, 6, 7, 8))(
        "te,ef->tf", x, w, hist, hist, jnp.dtype(jnp.bfloat16), True, True, None).jaxpr
  assert "reduce_max(8, 16)" in _cone(cal.eqns, _float8_casts(cal)[0].outvars[0])


def test_push_history_is_newest_first():
  h = jnp.array([[3.0, 2.0, 1.0]])
  np.testing.assert_array_equal(fp8.push_history(h, jnp.array([[9.0, 0, 0]])), [[9, 3, 2]])


def _delayed_config(**mesh):
  c = tiny_config(**mesh)
  c.model.matmul_precision, c.model.fp8_scaling = "fp8", "delayed"
  return c


def test_micro_batches_combine_amaxes_by_max_not_sum(data_dir):
  batch = random_batches(1)[0]
  cfg = _delayed_config()
  setup = state_lib.build(cfg, jax.devices()[:1])
  state = state_lib.init_state(setup, jax.random.key(0))
  halves = [{k: v[i::2] for k, v in batch.items()} for i in (0, 1)]   # rows (B/2, 2)
  cfg_half = _delayed_config()
  cfg_half.train.global_batch_size = 4
  setup_half = state_lib.build(cfg_half, jax.devices()[:1])
  fresh = lambda: jax.tree.map(jnp.copy, state)   # calibration donates its state
  seen = [train.fp8_ready(setup_half, fresh(), train.to_global(h, setup_half.batch_sharding))
          for h in halves]
  cfg.train.grad_accum_steps = 2
  setup = state_lib.build(cfg, jax.devices()[:1])
  both = train.fp8_ready(setup, fresh(), train.to_global(batch, setup.batch_sharding))
  want = jax.tree.map(jnp.maximum, seen[0].fp8_history, seen[1].fp8_history)
  jax.tree.map(np.testing.assert_array_equal, both.fp8_history, want)


def test_histories_resume_bit_identically_and_every_reader_opens_the_checkpoint(
    tmp_path, data_dir):
  cfg = _delayed_config()
  cfg.train.steps = 6
  devices = jax.devices()[:1]
  straight = train.train(cfg, str(tmp_path / "a"), devices=devices)
  train.train(cfg, str(tmp_path / "b"), devices=devices, stop_after_steps=4)
  second = train.train(cfg, str(tmp_path / "b"), devices=devices)
  assert second["loss"] == {k: v for k, v in straight["loss"].items() if k > 4}  # bit-exact
  ck = ckpt_lib.Checkpoints(str(tmp_path / "b/checkpoints"), use_async=False)
  meta = ck.meta(6)
  assert meta[ckpt_lib.FP8_HISTORY_META] == 16
  setup = state_lib.build(cfg, devices)
  # The trainer's own view: the histories, shifted once per step after calibration.
  state, _, _ = ck.restore(6, setup.abstract_state, keep_fp8_history=True)
  qkv = np.asarray(state.fp8_history["layers"]["attn"]["qkv_x"])
  assert qkv.shape == (2, 16) and (qkv[:, :7] > 0).all() and not qkv[:, 7:].any()
  a = ckpt_lib.Checkpoints(str(tmp_path / "a/checkpoints"), use_async=False)
  other, _, _ = a.restore(6, setup.abstract_state, keep_fp8_history=True)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(other))
  from growjax.interop import inspect_checkpoint
  assert inspect_checkpoint.describe(str(tmp_path / "b"))["fp8_history"] == {
      "tensors": 11, "length": 16, "values": 11 * 2 * 16}
  # A reader of the model's state (growth, export, eval) leaves them on disk.
  model_only, _, _ = ck.restore(6, setup.abstract_state)
  assert model_only.fp8_history is None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(model_only.params),
               jax.device_get(state.params))
  a.close(), ck.close()


def test_a_bf16_checkpoint_continues_in_delayed_fp8_after_one_calibration(tmp_path, data_dir):
  cfg = tiny_config()
  cfg.train.steps = 4
  train.train(cfg, str(tmp_path), devices=jax.devices()[:1])
  cfg = _delayed_config()
  cfg.train.steps = 6
  out = train.train(cfg, str(tmp_path), devices=jax.devices()[:1])
  assert sorted(out["loss"]) == [5, 6] and all(np.isfinite(list(out["loss"].values())))
  meta = json.loads((tmp_path / "checkpoints/6/meta/metadata").read_text())
  assert meta[ckpt_lib.FP8_HISTORY_META] == 16


def test_the_lowered_step_takes_the_histories():
  cfg = _delayed_config()
  setup = state_lib.build(cfg, jax.devices()[:1])
  abstract = train.step_abstract_state(setup)
  assert jax.tree.structure(abstract.fp8_history) == jax.tree.structure(
      init_fp8_history(setup.model_cfg))
  from growjax.train import attention_choice
  train.make_train_step(setup).lower(abstract, memory_probe.abstract_batch(setup))


@pytest.mark.parametrize("flag,match", [
    ("--config.model.fp8_scaling=late", r"config.model.fp8_scaling='late' is not an FP8 "
                                        r"scaling — choose one of current, delayed"),
    ("--config.model.fp8_amax_history=0", r"config.model.fp8_amax_history=0 must be a "
                                          r"positive integer"),
])
def test_bad_fp8_fields_are_refused_in_one_line_before_any_compute(flag, match, tmp_path,
                                                                    capsys):
  from growjax import cli
  try:
    code = cli.main(["growjax", "train", "--config", "configs/tiny.py", flag,
                     "--workdir", str(tmp_path / "w")])
  except SystemExit as e:
    code = e.code
  assert code != 0
  err = capsys.readouterr().err
  assert re.search(r"^growjax train: " + match, err), err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_on_a_mesh_the_histories_are_replicated_and_hold_the_global_amax(data_dir):
  batches = random_batches(3)

  def run(cfg, devices):
    setup = state_lib.build(cfg, devices)
    state = state_lib.init_state(setup, jax.random.key(0))
    step = train.make_train_step(setup)
    losses = []
    with jax.set_mesh(setup.mesh):
      state = train.fp8_ready(setup, state, train.to_global(batches[0], setup.batch_sharding))
      calibrated = jax.device_get(state.fp8_history)
      for b in batches:
        state, m = step(state, train.to_global(b, setup.batch_sharding))
        losses.append(float(m["loss"]))
    return losses, calibrated, state

  one_losses, one_h, _ = run(_delayed_config(), jax.devices()[:1])
  eight_losses, eight_h, eight = run(_delayed_config(data=2, fsdp=2, tensor=2), jax.devices())
  for h in jax.tree.leaves(eight.fp8_history):
    assert h.sharding.is_fully_replicated and len(h.sharding.device_set) == 8
  # Same params, same batch: the amax of a sharded tensor is its global max (the partial
  # maxima are all-reduced), so activations' amaxes agree to float rounding; gradients
  # come from sums reduced in another order.
  for group, hists in one_h["layers"].items():
    for name, h in hists.items():
      np.testing.assert_allclose(eight_h["layers"][group][name], h,
                                 rtol=1e-5 if name.endswith("_x") else 1e-3)
  np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-4)


def test_a_changed_history_length_keeps_the_newest_amaxes():
  long = state_lib.build(_delayed_config(), jax.devices()[:1])
  cfg = _delayed_config()
  cfg.model.fp8_amax_history = 4
  short = state_lib.build(cfg, jax.devices()[:1])
  state = state_lib.init_state(long, jax.random.key(0))
  filled = jax.tree.map(lambda h: jnp.broadcast_to(jnp.arange(1.0, 17.0), h.shape),
                        state.fp8_history)
  cut = state_lib.with_fp8_history(short, state.replace(fp8_history=filled))
  for h in jax.tree.leaves(cut.fp8_history):
    np.testing.assert_array_equal(h, [[1, 2, 3, 4]] * 2)          # newest first
  grown = state_lib.with_fp8_history(long, cut)
  for h in jax.tree.leaves(grown.fp8_history):
    np.testing.assert_array_equal(h[:, :4], [[1, 2, 3, 4]] * 2)
    assert not np.asarray(h[:, 4:]).any()
  assert state_lib.with_fp8_history(state_lib.build(tiny_config(), jax.devices()[:1]),
                                    cut).fp8_history is None    # bf16: dropped
