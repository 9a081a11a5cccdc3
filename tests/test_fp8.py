"""FP8 matmuls (growjax/fp8.py): exact where the data is fp8-representable, close to bf16
on random data (forward and both gradients), the e4m3 / e5m2 casts in the lowered graph
where XLA's GPU GEMM rewriter looks for them, and a tiny model trains with a loss curve
close to bf16's.

Tolerances (normwise relative error against a float32 reference). Rounding to a format
with m mantissa bits has a relative error uniform in +-2^-(m+1), rms 2^-(m+1)/sqrt(3):
e4m3 (m=3) 3.6%, e5m2 (m=2) 7.2%, bf16 (m=7) 0.23%. A product of two rounded operands
adds both (rms ~5.1% forward; ~8.8% for a gradient: e5m2 x e4m3), and summing K terms of
random sign keeps that relative size. So: forward < 8%, gradients < 13%, with bf16 in the
same call an order of magnitude tighter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from growjax.model import fp8


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_exact_on_fp8_representable_values():
  """Entries k/128 * {0, 64, 128, 224, 448} with amax 3.5: the scale is 1/128 (exact),
  every scaled entry is an e4m3 value, so the fp8 einsum equals the float32 one."""
  rng = np.random.default_rng(0)
  vals = np.array([0, 64, 128, 224, 448, -64, -128, -224, -448]) / 128.0
  x = rng.choice(vals, (3, 5, 16)).astype(np.float32)
  w = rng.choice(vals, (16, 7)).astype(np.float32)
  x[0, 0, 0] = w[0, 0] = 3.5
  got = fp8.einsum("bte,ef->btf", x, w, out_dtype=jnp.float32)
  np.testing.assert_array_equal(got, np.einsum("bte,ef->btf", x, w))


def test_forward_and_gradients_close_to_bf16():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 32, 256)).astype(np.float32)
  w = (rng.normal(size=(256, 128)) * 0.05).astype(np.float32)
  ct = rng.normal(size=(4, 32, 128)).astype(np.float32)    # a random output cotangent

  def run(precision, dtype):
    f = lambda x, w: fp8.einsum("bte,ef->btf", x, w, out_dtype=dtype, precision=precision)
    y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(ct, dtype))
    return y, dx, dw

  ref = run("bf16", jnp.float32)
  bf16 = run("bf16", jnp.bfloat16)
  f8 = run("fp8", jnp.bfloat16)
  assert f8[0].dtype == jnp.bfloat16                       # bf16 outputs
  err_bf16 = [_rel(a, r) for a, r in zip(bf16, ref)]
  err_fp8 = [_rel(a, r) for a, r in zip(f8, ref)]
  assert max(err_bf16) < 0.01, err_bf16
  assert err_fp8[0] < 0.08, err_fp8                       # forward: e4m3 x e4m3
  assert max(err_fp8[1:]) < 0.13, err_fp8                 # dx, dw: e5m2 x e4m3
  assert min(err_fp8) > 0.005                             # it did round to fp8


def test_the_compiled_graph_keeps_float8_dot_operands():
  """The dots themselves take float8 operands (e4m3 forward, e5m2 x e4m3 backward) and
  survive compilation: a quantize-dequantize round trip in front of a bf16 dot is folded
  away by XLA's simplifier (no float8 tensor was left on an H100), these are not."""
  x = jnp.ones((2, 8, 32), jnp.bfloat16)
  w = jnp.ones((32, 16), jnp.bfloat16)
  c = jnp.ones((2, 8, 16), jnp.float32)  # an argument, so the cotangent is not a constant
  loss = lambda x, w, c: (fp8.einsum("bte,ef->btf", x, w).astype(jnp.float32) * c).sum()
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w, c).compile().as_text()
  assert "f8e4m3fn" in hlo.lower() and "f8e5m2" in hlo.lower()


def test_transposed_specs_of_the_model_projections():
  assert fp8._transposed_specs("bte,enh->btnh") == ("btnh,enh->bte", "bte,btnh->enh")
  with pytest.raises(ValueError, match="two-operand projection"):
    fp8._transposed_specs("bij,jk->bk")


def test_a_bad_precision_is_refused():
  with pytest.raises(ValueError, match=r"config.model.matmul_precision='int8' .* bf16, fp8"):
    fp8.check_precision("int8")


def _train(precision, steps=40):
  """A two-layer MLP language model on a fixed random bigram teacher, bf16 compute,
  float32 master params, Adam; every matmul through `fp8.einsum`."""
  vocab, e, h, b, t = 64, 64, 256, 16, 32
  k = jax.random.split(jax.random.key(0), 5)
  params = {"emb": jax.random.normal(k[0], (vocab, e)) * 0.5,
            "w1": jax.random.normal(k[1], (e, h)) / np.sqrt(e),
            "w2": jax.random.normal(k[2], (h, e)) / np.sqrt(h),
            "head": jax.random.normal(k[3], (e, vocab)) / np.sqrt(e)}
  teacher = jax.random.randint(k[4], (vocab,), 0, vocab)
  tokens = jax.random.randint(jax.random.key(1), (steps, b, t), 0, vocab)

  def loss_fn(p, x):
    mm = lambda s, a, w: fp8.einsum(s, a, w, out_dtype=jnp.bfloat16, precision=precision)
    z = p["emb"][x].astype(jnp.bfloat16)
    z = z + mm("bte,eh->bth", jax.nn.gelu(mm("bte,eh->bth", z, p["w1"])), p["w2"])
    logits = jnp.einsum("bte,ev->btv", z, p["head"].astype(jnp.bfloat16),
                        preferred_element_type=jnp.float32)    # the head stays bf16
    return optax.softmax_cross_entropy_with_integer_labels(logits, teacher[x]).mean()

  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, x):
    loss, g = jax.value_and_grad(loss_fn)(p, x)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  losses = []
  for x in tokens:
    params, opt, loss = step(params, opt, x)
    losses.append(float(loss))
  return np.array(losses)


def test_a_tiny_model_trains_in_fp8_like_in_bf16():
  bf16, f8 = _train("bf16"), _train("fp8")
  assert bf16[-1] < 0.1 * bf16[0]                         # it learns the teacher
  # The curves agree within 2% of the loss plus 0.02 nats at every step: fp8 rounding
  # is ~5% noise per matmul output, mostly averaged out over the batch and by Adam; the
  # absolute term covers the end of the run, where the loss is near 0.
  np.testing.assert_allclose(f8, bf16, rtol=0.02, atol=0.02)
  assert abs(f8[-10:].mean() - bf16[-10:].mean()) < 0.02
