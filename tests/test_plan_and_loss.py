"""The paper's growth-timing fit, and the chunked loss against a direct computation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from growjax.model import loss
from growjax.growth import timing


@pytest.mark.parametrize("params,tokens,expected_d", [
    (7e9, 2e12, 11.11e9), (13e9, 2e12, 15.84e9), (70e9, 2e12, 42.48e9)])
def test_plan_matches_paper_examples(params, tokens, expected_d):
  d = timing.growth_tokens(params, timing.budget_flops(params, tokens))
  assert d == pytest.approx(expected_d, rel=0.02)


def test_plan_rejects_bad_input():
  with pytest.raises(ValueError, match="--params"):
    timing.growth_tokens(-1, 1e20)
  with pytest.raises(ValueError, match="--flops"):
    timing.describe(1e9, None, None)


def test_plan_warns_outside_the_fitted_range_and_refuses_flops_with_tokens(capsys):
  from growjax import cli
  assert timing.fit_range_warning(1e9, 1e21) is None
  # (Issue 26: --tokens 1e9 at N = 1e7, and 2e10 at N = 1e9, put d past the whole
  # budget's tokens and are refused now; tests/test_rerun_and_plan.py has those lines.)
  assert cli.main(["growjax", "plan", "--params", "1e7", "--tokens", "1e11"]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-1] == ("warning: N = 1e+07 and C = 6e+18 are outside the range of the paper's "
                     "runs (N 410M to 7B parameters, C 1e19 to 3.2e22 FLOPs): d is an "
                     "extrapolation of the fit")
  assert cli.main(["growjax", "plan", "--params", "1e9", "--tokens", "1e11"]) == 0
  assert "warning" not in capsys.readouterr().out
  assert cli.main(["growjax", "plan", "--params", "7e9", "--flops", "8e22",
                   "--tokens", "2e12"]) == 2
  assert capsys.readouterr().err.strip() == (
      "growjax plan: --flops and --tokens both given — give one (C = 6 N D)")


@pytest.mark.parametrize("chunk", [4, 16])
def test_chunked_cross_entropy_equals_direct(chunk):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k1, (3, 16, 8))
  w = jax.random.normal(k2, (8, 50))
  y = jax.random.randint(k3, (3, 16), 0, 50)

  @jax.jit   # one compile instead of one per eager op (as the loss runs in the train step)
  def both(h, w, y):
    total, parts = loss.cross_entropy(h, w, y, z_loss=1e-2, chunk_len=chunk,
                                      dtype=jnp.float32)
    logits = h @ w
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    z = 1e-2 * jnp.mean(jax.nn.logsumexp(logits, -1) ** 2)
    g = jax.grad(lambda w: loss.cross_entropy(h, w, y, chunk_len=chunk,
                                              dtype=jnp.float32)[0])(w)
    g_ref = jax.grad(lambda w: optax.softmax_cross_entropy_with_integer_labels(
        h @ w, y).mean())(w)
    return total, parts["loss"], ref, z, g, g_ref

  total, part, ref, z, g, g_ref = both(h, w, y)
  np.testing.assert_allclose(part, ref, rtol=1e-5)
  np.testing.assert_allclose(total, ref + z, rtol=1e-5)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_bf16_loss_gradients_match_float32_reference():
  """The LM head's backward runs in bf16 (custom VJP); both gradients stay close to f32."""
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  h = jax.random.normal(k1, (2, 32, 64))
  w = jax.random.normal(k2, (64, 300)) * 0.1
  y = jax.random.randint(k3, (2, 32), 0, 300)
  ref = lambda h, w: optax.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()
  ours = lambda h, w: loss.cross_entropy(h, w, y, chunk_len=8, dtype=jnp.bfloat16)[0]
  for g, g_ref in zip(jax.grad(ours, (0, 1))(h, w), jax.grad(ref, (0, 1))(h, w)):
    assert g.dtype == jnp.float32
    err = float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref))
    assert err < 2e-2, err


def test_tokenizer_refuses_a_vocab_size_the_corpus_cannot_reach(tmp_path, capsys):
  from growjax import cli
  corpus = tmp_path / "c.txt"
  corpus.write_text("To be, or not to be, that is the question.\n" * 50)
  prefix = str(tmp_path / "m")
  assert cli.main(["growjax", "tokenizer", "--input", str(corpus), "--vocab_size", "32000",
                   "--model_prefix", prefix]) == 2
  [line] = capsys.readouterr().err.strip().splitlines()
  reached = int(line.split("training reached ")[1].split()[0])
  assert line == (f"growjax tokenizer: --vocab_size 32000 is more than this corpus supports: "
                  f"training reached {reached} pieces — give --vocab_size {reached} (or less), "
                  f"or train on more text")
  assert not os.path.exists(prefix + ".model")
  assert cli.main(["growjax", "tokenizer", "--input", str(corpus), "--vocab_size",
                   str(reached), "--model_prefix", prefix]) == 0
  assert os.path.exists(prefix + ".model")
