"""Model: shapes, logical axes, scanned == unrolled, remat invariance, causality, GQA."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from growjax import model, sharding
from growjax.train import optimizer
from growjax.model import (EMBED, MLP, PARAMS, READS, VOCAB, WRITES, ModelConfig, Transformer,
                           check_params, init_params, logical_axes)

CFG = ModelConfig(vocab_size=64, num_layers=4, embed_dim=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, dtype="float32")


# Jitted (the config static): one compile per config and shape, reused across the tests,
# instead of one per eager op.
@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, tokens):
  return Transformer(cfg).apply({"params": params}, tokens)


_init = jax.jit(init_params, static_argnums=0)


def test_param_shapes_and_logical_axes_match():
  params = _init(CFG, jax.random.key(0))
  axes = logical_axes(CFG)
  sizes = {"vocab": 64, "embed": 32, "mlp": 48, "heads": 4, "kv_heads": 2, "head_dim": 8,
           "layers": 4}
  leaves = jax.tree.leaves(jax.tree.map(
      lambda names, p: (names, p.shape), axes, params, is_leaf=lambda x: isinstance(x, tuple)),
      is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple))
  assert len(leaves) == 12
  for names, shape in leaves:
    assert tuple(sizes[n] for n in names) == shape
  assert sum(p.size for p in jax.tree.leaves(params)) == CFG.num_params()


def test_scanned_equals_unrolled():
  params = _init(CFG, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
  scanned = _logits(CFG, params, tokens)
  unrolled = _logits(CFG.replace(scan_unroll=CFG.num_layers), params, tokens)
  np.testing.assert_allclose(scanned, unrolled, rtol=1e-6, atol=1e-6)
  # The unrolled graph really has no loop left.
  hlo = jax.jit(lambda p, t: _logits(CFG.replace(scan_unroll=4), p, t)).lower(
      params, tokens).as_text()
  assert "while" not in hlo


@pytest.mark.parametrize("layers", [4, 8])
def test_scan_unroll_zero_unrolls_every_layer_at_any_depth(layers):
  """0 is the GPU fast path's switch: it must stay fully unrolled after depth growth, in
  the backward as well (the optimized HLO of the gradient has no loop)."""
  cfg = CFG.replace(num_layers=layers, scan_unroll=0, remat_policy="dots")
  assert cfg.layers_unrolled_per_iteration == layers
  params = _init(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
  np.testing.assert_allclose(_logits(cfg, params, tokens),
                             _logits(cfg.replace(scan_unroll=1), params, tokens),
                             rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.grad(lambda p: _logits(cfg, p, tokens).sum()))
  assert "while" not in grad.lower(params).compile().as_text()
  assert " while" in jax.jit(jax.grad(lambda p: _logits(cfg.replace(scan_unroll=1), p,
                                                        tokens).sum())).lower(
      params).compile().as_text()


@pytest.mark.parametrize("unroll", [-1, 3])
def test_scan_unroll_that_does_not_divide_the_depth_is_refused(unroll):
  with pytest.raises(ValueError, match="scan_unroll"):
    CFG.replace(scan_unroll=unroll).validate("config.model")


@pytest.mark.parametrize("policy", ["full", "dots", "save_proj"])
def test_remat_changes_nothing(policy):
  params = _init(CFG, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
  ref = _logits(CFG, params, tokens)
  np.testing.assert_allclose(_logits(CFG.replace(remat_policy=policy), params, tokens), ref,
                             rtol=1e-6, atol=1e-6)


def test_causal():
  params = _init(CFG, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, 64)
  changed = tokens.at[0, 10].set((tokens[0, 10] + 1) % 64)
  a, b = _logits(CFG, params, tokens), _logits(CFG, params, changed)
  np.testing.assert_allclose(a[0, :10], b[0, :10], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[0, 10:], b[0, 10:])


def test_gqa_equals_mha_with_repeated_kv():
  """A GQA model equals an MHA model whose kv heads are the GQA ones repeated per group."""
  params = _init(CFG, jax.random.key(3))
  mha = CFG.replace(num_kv_heads=CFG.num_heads)
  rep = CFG.num_heads // CFG.num_kv_heads
  mha_params = jax.tree.map(lambda x: x, params)
  for name in ("k", "v"):
    mha_params["layers"]["attn"][name] = jnp.repeat(params["layers"]["attn"][name], rep, axis=2)
  tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, 64)
  np.testing.assert_allclose(_logits(CFG, params, tokens), _logits(mha, mha_params, tokens),
                             rtol=1e-5, atol=1e-5)


def test_tied_embeddings_have_no_head():
  tied = CFG.replace(tie_embeddings=True)
  params = _init(tied, jax.random.key(0))
  assert "lm_head" not in params
  assert _logits(tied, params, jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 64)


def test_bad_model_config_names_the_field():
  with pytest.raises(ValueError, match="num_kv_heads"):
    CFG.replace(num_kv_heads=3).validate()
  with pytest.raises(ValueError, match="remat_policy"):
    CFG.replace(remat_policy="sometimes").validate()
  with pytest.raises(ValueError, match="unknown field"):
    ModelConfig.from_config(dict(vocab_size=1, num_layer=2))


def test_flops_per_token_counts_6n_plus_attention():
  n = CFG.num_params(include_embedding=False)
  assert CFG.flops_per_token(16) == 6 * n + 12 * 4 * 4 * 8 * 16


# ----------------------------------------------------------------------------- PARAMS

def test_params_table_is_what_the_modules_create():
  for cfg in (CFG, CFG.replace(tie_embeddings=True)):
    traced = jax.tree.map(tuple, nn.get_partition_spec(model.abstract_params(cfg)),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert traced == logical_axes(cfg)


def test_a_role_that_contradicts_its_axes_is_refused():
  head = dataclasses.replace(PARAMS["lm_head"], axes=(VOCAB, EMBED))
  with pytest.raises(ValueError, match=re.escape(
      "PARAMS['lm_head'] declares role 'reads' with axes ('vocab', 'embed'), but a weight "
      "that reads the residual stream contracts 'embed', its first axis")):
    check_params({**PARAMS, "lm_head": head})
  for path, change in [("layers/attn/o", dict(role=READS)),
                       ("final_norm/scale", dict(role=WRITES)),
                       ("layers/mlp/up", dict(axes=(EMBED, MLP))),  # scanned: needs layers
                       ("embedding", dict(decay="never"))]:
    with pytest.raises(ValueError, match=re.escape(f"PARAMS[{path!r}]") + ".* — "):
      check_params({**PARAMS, path: dataclasses.replace(PARAMS[path], **change)})


def test_an_undeclared_parameter_is_refused(monkeypatch):
  monkeypatch.delitem(PARAMS, "layers/mlp/up")
  with pytest.raises(ValueError, match="'layers/mlp/up' is not declared"):
    jax.eval_shape(lambda: init_params(CFG, jax.random.key(0)))


def test_decay_mask_and_sharding_fields_come_from_the_table():
  opt = ml_collections.ConfigDict(dict(decay_embeddings=True, decay_norms=False))
  mask = optimizer.decay_mask(logical_axes(CFG), opt)
  assert mask["embedding"] and mask["lm_head"] and mask["layers"]["attn"]["o"]
  assert not mask["final_norm"]["scale"] and not mask["layers"]["mlp_norm"]["scale"]
  shapes = jax.tree.map(lambda axes: tuple(getattr(CFG, model.AXIS_FIELDS[a]) for a in axes),
                        logical_axes(CFG), is_leaf=lambda x: isinstance(x, tuple))
  with pytest.raises(ValueError, match=r"config.model.mlp_dim=48 does not divide"):
    sharding.check_divisible(logical_axes(CFG), shapes, dict(data=1, fsdp=1, tensor=5),
                             (("mlp", "tensor"),))
