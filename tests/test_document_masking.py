"""Document masking: packed windows attend within each document, on every backend.

The reference is the model run on each document alone, as its own sequence from
position 0: a packed window with `segment_ids` / `positions` must give the same
logits for every token (XLA's masked path on CPU; the TPU splash kernel through
the Pallas interpreter). The loss counts only `loss_mask` targets, and the cuDNN
packed layout (`q_seqlen`, `q_offsets`) is read off the segment ids exactly.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from growjax.model import loss as loss_lib
from growjax import train
from growjax.model import attention
from growjax.model import ModelConfig, Transformer, init_params

CFG = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, dtype="float32", attention_impl="xla")
DOC_LENGTHS = (50, 40, 38)  # one window of 128: splash needs a multiple of 128


def _packed(lengths, seed=0):
  rng = np.random.default_rng(seed)
  docs = [rng.integers(3, CFG.vocab_size, size=n).astype(np.int32) for n in lengths]
  tokens = np.concatenate(docs)[None]
  segment_ids = np.concatenate([np.full(n, i + 1, np.int32) for i, n in enumerate(lengths)])[None]
  positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])[None]
  return docs, tokens, segment_ids, positions


def _per_document(cfg, params, docs):
  """Each document alone, from position 0: one batch, each row a document padded at its
  end (causal attention: the padding cannot reach the document's own positions)."""
  longest = max(len(d) for d in docs)
  rows = np.stack([np.pad(d, (0, longest - len(d))) for d in docs])
  logits = np.asarray(jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(
      params, rows))
  return np.concatenate([logits[i, :len(d)] for i, d in enumerate(docs)])


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_packed_window_equals_each_document_alone(impl):
  params = init_params(CFG, jax.random.key(0))
  docs, tokens, segment_ids, positions = _packed(DOC_LENGTHS)
  cfg = CFG.replace(attention_impl=impl)
  packed = np.asarray(jax.jit(lambda p, t, s, q: Transformer(cfg).apply(
      {"params": p}, t, segment_ids=s, positions=q))(params, tokens, segment_ids, positions))[0]
  alone = _per_document(CFG, params, docs)
  np.testing.assert_allclose(packed, alone, rtol=2e-5, atol=2e-5)
  # Without the masks the later documents see the earlier ones: the test can fail.
  unmasked = np.asarray(jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))(
      params, tokens))[0]
  assert np.abs(unmasked[DOC_LENGTHS[0]:] - alone[DOC_LENGTHS[0]:]).max() > 1e-2


def test_documents_past_max_segments_share_the_last_segment():
  ids = jnp.array([[1, 1, 2, 3, 4, 4, 0, 0]])
  np.testing.assert_array_equal(attention.document_segments(ids, 3),
                                [[1, 1, 2, 3, 3, 3, 0, 0]])


def test_cudnn_packed_layout_is_read_off_the_segment_ids():
  ids = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0],
                   [1, 1, 1, 1, 1, 1, 1, 1]])
  lengths, offsets = attention.cudnn_ragged(ids, 4)
  np.testing.assert_array_equal(lengths, [[3, 2, 1, -1], [8, -1, -1, -1]])
  np.testing.assert_array_equal(offsets, [[0, 3, 5, -1, -1], [0, -1, -1, -1, -1]])


def test_loss_ignores_padding_targets():
  """Padding rows (any values) change neither the loss nor the gradient."""
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 11, size=(2, 16)), jnp.int32)
  mask = jnp.ones((2, 16), jnp.int32).at[1, 10:].set(0)

  def loss(h, mask):
    return loss_lib.cross_entropy(h, head, y, chunk_len=8, dtype=jnp.float32, mask_BxT=mask)[0]

  garbage = h.at[1, 10:].set(jnp.nan)
  value, grad = jax.value_and_grad(loss)(garbage, mask)
  full = loss_lib.cross_entropy(h[:1], head, y[:1], chunk_len=8, dtype=jnp.float32)[0]
  part = loss_lib.cross_entropy(h[1:, :10], head, y[1:, :10], chunk_len=10,
                                dtype=jnp.float32)[0]
  np.testing.assert_allclose(value, (full * 16 + part * 10) / 26, rtol=1e-6)
  assert np.isfinite(np.asarray(grad[:, :10])).all()
  assert np.isfinite(np.asarray(value))


def test_document_masking_off_computes_one_sequence_per_window():
  params = init_params(CFG, jax.random.key(2))
  _, tokens, segment_ids, positions = _packed(DOC_LENGTHS, seed=3)
  batch = {"inputs": tokens, "targets": np.roll(tokens, -1, axis=1),
           "segment_ids": segment_ids, "positions": positions,
           "loss_mask": np.ones_like(tokens)}
  cfg = ml_collections.ConfigDict({"data": {"document_masking": False},
                                   "train": {"loss_chunk_len": 128}})
  off = train.loss_fn(params, train.model_batch(batch, cfg), CFG, cfg.train, 0.0)[0]
  plain = train.loss_fn(params, {"inputs": tokens, "targets": batch["targets"]}, CFG,
                        cfg.train, 0.0)[0]
  cfg.data.document_masking = True
  on = train.loss_fn(params, train.model_batch(batch, cfg), CFG, cfg.train, 0.0)[0]
  np.testing.assert_allclose(off, plain, rtol=1e-6)
  assert abs(float(on) - float(off)) > 1e-4
