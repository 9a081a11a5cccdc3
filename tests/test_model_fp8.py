"""`config.model.matmul_precision='fp8'`: the block projections go through growjax.model.fp8.

The fp8 model must stay close to the bf16 one (e4m3 keeps about 2 significant
digits per operand, so logits agree to a few percent), its gradients must be
finite and close, and an unknown precision is refused naming the field.
"""

import jax
import numpy as np
import pytest

from growjax.model import ModelConfig, Transformer, init_params

CFG = ModelConfig(vocab_size=64, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=128, dtype="float32", attention_impl="xla")


def test_fp8_projections_stay_close_to_bf16_logits_and_gradients():
  params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))  # not op by op
  tokens = np.random.default_rng(0).integers(0, 64, size=(2, 32)).astype(np.int32)

  def loss(p, cfg):
    logits = Transformer(cfg).apply({"params": p}, tokens)
    return jax.nn.logsumexp(logits, -1).mean() - logits[..., 0].mean(), logits

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (l16, z16), g16 = grad(params, CFG)
  (l8, z8), g8 = grad(params, CFG.replace(matmul_precision="fp8"))
  assert not np.array_equal(np.asarray(z8), np.asarray(z16))  # fp8 was really used
  np.testing.assert_allclose(z8, z16, atol=0.05 * float(np.abs(z16).max()))
  for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g16)):
    assert np.isfinite(np.asarray(a)).all()
    assert np.abs(a - b).max() <= 0.15 * np.abs(b).max() + 1e-6


def test_unknown_precision_is_refused_naming_the_field():
  with pytest.raises(ValueError, match=r"config.model.matmul_precision='int4'"):
    CFG.replace(matmul_precision="int4").validate()
