"""Delayed FP8's one-pass SwiGLU backward (`config.model.fp8_swiglu_kernel`,
growjax.model.fp8_swiglu): the Pallas kernel (run here by Pallas' interpreter) gives the jnp
math bit for bit; its gradients are autodiff's to float8 rounding and its amaxes are
autodiff's exactly; a model on the kernel reads and writes the same histories as the two
projections it replaces and trains the same; a remat policy that saves the float8 operand
of the down projection trains bit-identically to recomputing it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growjax.model import fp8
from growjax.model import fp8_swiglu
from growjax.model import ModelConfig, Transformer, init_fp8_history, init_params

CFG = ModelConfig(vocab_size=64, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=96, dtype="bfloat16", attention_impl="xla",
                  remat_policy="dots", matmul_precision="fp8", fp8_scaling="delayed",
                  fp8_amax_history=4)
TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 32)).astype(np.int32)


def _inputs(cols=1100):   # more than one 1024-column block, the last one partial
  k = jax.random.split(jax.random.key(0), 3)
  dh = jax.random.normal(k[0], (2, 8, cols), jnp.bfloat16)
  gate = (3 * jax.random.normal(k[1], (2, 8, cols))).astype(jnp.bfloat16)
  up = jax.random.normal(k[2], (2, 8, cols), jnp.bfloat16)
  return dh, gate, up


def test_kernel_matches_the_jnp_math_bit_for_bit_and_autodiff_to_float8_rounding():
  dh, gate, up = _inputs()
  s_gate, s_up = jnp.float32(0.5), jnp.float32(2.0)
  f = lambda g, u: jnp.sum(jax.nn.silu(g * s_gate) * (u * s_up) * dh.astype(jnp.float32))
  dg, du = jax.grad(f, argnums=(0, 1))(gate.astype(jnp.float32), up.astype(jnp.float32))
  d_gate, d_up = dg / s_gate, du / s_up      # with respect to gate and up themselves
  s_dg = fp8.scale_from_amax(jnp.max(jnp.abs(d_gate)), fp8.E5M2)
  s_du = fp8.scale_from_amax(jnp.max(jnp.abs(d_up)), fp8.E5M2)
  args = (dh, gate, up, s_gate, s_up, s_dg, s_du)
  ref = fp8_swiglu.grads_cast(*args, pallas=False)
  out = fp8_swiglu.grads_cast(*args, pallas=True, interpret=True)
  for a, b in zip(ref, out):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)),
                                  np.asarray(b.astype(jnp.float32)))
  assert out[0].dtype == fp8.E5M2 and out[0].shape == dh.shape
  np.testing.assert_allclose(float(out[2]), float(jnp.max(jnp.abs(d_gate))), rtol=1e-6)
  np.testing.assert_allclose(float(out[3]), float(jnp.max(jnp.abs(d_up))), rtol=1e-6)
  for q, s, exact in ((out[0], s_dg, d_gate), (out[1], s_du, d_up)):
    back = q.astype(jnp.float32) * s
    # e5m2 keeps 2 mantissa bits: within 12.5% of each value, or of the scale's floor
    assert bool(jnp.all(jnp.abs(back - exact) <= 0.125 * jnp.abs(exact) + 1e-4 * s * 57344))


def _grads(cfg, params, history, calibrate=False):
  def loss(p, h):
    logits = Transformer(cfg).apply({"params": p, fp8.HISTORY_COLLECTION: h}, TOKENS)
    return (jax.nn.logsumexp(logits.astype(jnp.float32), -1).mean()
            - logits[..., 0].astype(jnp.float32).mean())
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  if calibrate:
    with fp8.calibrating():
      return grad(params, history)
  return grad(params, history)


def test_model_on_the_kernel_keeps_the_histories_and_gradients_of_the_two_projections():
  params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))
  zero = init_fp8_history(CFG)
  kernel = CFG.replace(fp8_swiglu_kernel="pallas")
  assert jax.tree.structure(init_fp8_history(kernel)) == jax.tree.structure(zero)
  _, seen = _grads(CFG, params, zero, calibrate=True)
  _, seen_kernel = _grads(kernel, params, zero, calibrate=True)
  history = fp8.push_history(zero, seen)
  g_ref, obs_ref = _grads(CFG, params, history)
  g_ker, obs_ker = _grads(kernel, params, history)
  for name in ("gate_up_x", "gate_g", "up_g"):   # the same histories, reported once each
    for obs in (seen_kernel, obs_ker):
      h = np.asarray(obs["layers"]["mlp"][name])
      assert (h[:, 0] > 0).all() and not h[:, 1:].any(), name
  np.testing.assert_array_equal(np.asarray(obs_ker["layers"]["mlp"]["gate_up_x"]),
                                np.asarray(obs_ref["layers"]["mlp"]["gate_up_x"]))
  for name in ("gate_g", "up_g"):
    np.testing.assert_allclose(np.asarray(obs_ker["layers"]["mlp"][name])[:, 0],
                               np.asarray(obs_ref["layers"]["mlp"][name])[:, 0], rtol=0.02)
  cos = lambda a, b: float(jnp.vdot(a.ravel(), b.ravel())
                           / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_ker)):
    assert cos(a.astype(jnp.float32), b.astype(jnp.float32)) > 0.99


def test_kernel_setting_is_checked_and_auto_keeps_the_projections_off_gpu():
  with pytest.raises(ValueError, match="fp8_swiglu_kernel='triton'.*auto, pallas, off"):
    CFG.replace(fp8_swiglu_kernel="triton").validate()
  assert not fp8_swiglu.uses_pallas("auto")   # CPU here
  assert fp8_swiglu.uses_pallas("pallas") and not fp8_swiglu.uses_pallas("off")


@pytest.mark.parametrize("precision", ["fp8_delayed", "fp8"])
def test_saving_the_float8_mlp_operand_trains_as_recomputing_it(precision):
  """remat 'dots_attention_mlp_in' keeps the down projection's float8 input (as bytes:
  remat's reduce_precision rounds e4m3fn as IEEE e4m3, and made inf of what lies above
  240) instead of recomputing it: the same gradients, bit for bit."""
  cfg = CFG.replace(fp8_scaling="delayed" if precision == "fp8_delayed" else "current")
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  history = init_fp8_history(cfg) if precision == "fp8_delayed" else {}

  def grads(policy):
    c = cfg.replace(remat_policy=policy)
    def loss(p):
      variables = {"params": p, fp8.HISTORY_COLLECTION: history} if history else {"params": p}
      return jnp.mean(Transformer(c).apply(variables, TOKENS).astype(jnp.float32) ** 2)
    with fp8.calibrating():
      return jax.jit(jax.grad(loss))(params)
  a, b = grads("dots_attention"), grads("dots_attention_mlp_in")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.isfinite(np.asarray(y, np.float32)).all()
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_auto_takes_the_kernel_on_one_gpu_only(monkeypatch):
  """A Pallas call is not split by the SPMD partitioner: 'auto' takes the kernel where
  the step's mesh has one device, and the two projections on a mesh of several."""
  monkeypatch.setattr(fp8_swiglu.jax, "default_backend", lambda: "gpu")
  resolved = {}
  for n in (1, len(jax.devices())):
    def step(x, n=n):    # resolved at trace time, as the model does
      resolved[n] = fp8_swiglu.uses_pallas("auto")
      return x
    with jax.set_mesh(jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])):
      jax.jit(step)(1.0)
  assert len(jax.devices()) > 1, "the suite runs with 8 host devices"
  assert resolved == {1: True, len(jax.devices()): False}
