"""GPU check of document masking through cuDNN's packed layout (run on a GPU).

  python benchmarks/check_document_masking_gpu.py

A 2-layer model on packed windows (documents of random lengths, a padded tail in
one row): the loss and gradients with `attention_impl='cudnn'` (cuDNN flash
attention, `q_seqlen` / `q_offsets`) against `attention_impl='xla'` (an explicit
mask), in float32 params / bf16 compute, and the cuDNN logits against each
document run alone. Prints the largest differences and exits non-zero past the
tolerances (bf16 compute: 2e-2 relative on logits, 5e-2 on gradients).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from growjax import train
from growjax.model import ModelConfig, Transformer, init_params

SEQ = 512


def packed_batch(rng, rows: int, pad: bool = True):
  tokens = rng.integers(3, 1000, size=(rows, SEQ + 1)).astype(np.int32)
  seg = np.zeros((rows, SEQ), np.int32)
  pos = np.zeros((rows, SEQ), np.int32)
  docs = []
  for b in range(rows):
    t, d = 0, 1
    end = SEQ - 37 if (b == 1 and pad) else SEQ  # row 1 ends in padding
    while t < end:
      n = min(int(rng.integers(5, 200)), end - t)
      seg[b, t:t + n], pos[b, t:t + n] = d, np.arange(n)
      docs.append((b, t, n))
      t, d = t + n, d + 1
  mask = (seg > 0).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": seg,
          "positions": pos, "loss_mask": mask}, docs


def check(pad: bool) -> bool:
  cfg = ModelConfig(vocab_size=1000, num_layers=2, embed_dim=256, num_heads=4, num_kv_heads=2,
                    head_dim=64, mlp_dim=512, dtype="bfloat16")
  params = init_params(cfg, jax.random.key(0))
  batch, docs = packed_batch(np.random.default_rng(0), 4, pad)
  print(f"--- packed windows, {'a padded tail in row 1' if pad else 'no padding'}")
  train_cfg = type("T", (), {"loss_chunk_len": 512})()
  out = {}
  for impl in ("xla", "cudnn", "ragged"):
    c = (cfg.replace(attention_impl="cudnn", cudnn_packing="ragged") if impl == "ragged"
         else cfg.replace(attention_impl=impl))
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: train.loss_fn(p, batch, c, train_cfg, 0.0)[0]))(params)
    logits = jax.jit(lambda p: Transformer(c).apply(
        {"params": p}, batch["inputs"], segment_ids=batch["segment_ids"],
        positions=batch["positions"]))(params)
    out[impl] = (float(loss), grads, np.asarray(logits, np.float32))
    print(f"{impl}: loss {float(loss):.6f}, finite grads "
          f"{all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))}")
  ok = True
  for name in ("cudnn", "ragged"):
    ok &= _compare(name, out, batch, docs, params, cfg)
  return bool(ok)


def _compare(name, out, batch, docs, params, cfg) -> bool:
  ok = True
  print(f"cuDNN, packing '{'mask' if name == 'cudnn' else 'ragged'}':")
  out = dict(out, cudnn=out[name])
  d_logit = np.abs(out["cudnn"][2] - out["xla"][2])
  valid = batch["segment_ids"] > 0
  rel = d_logit[valid].max() / np.abs(out["xla"][2][valid]).max()
  print(f"logits cudnn vs xla (real tokens): max rel diff {rel:.2e}")
  ok &= rel < 2e-2
  flat_c = jax.tree_util.tree_leaves_with_path(out["cudnn"][1])
  flat_x = jax.tree.leaves(out["xla"][1])
  rels = {jax.tree_util.keystr(path): float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-12))
          for (path, a), b in zip(flat_c, flat_x)}
  grel = max(rels.values())
  if grel >= 5e-2:
    print("  per parameter:", {k: f"{v:.1e}" for k, v in rels.items()})
  print(f"gradients cudnn vs xla: max rel diff {grel:.2e}")
  ok &= grel < 5e-2
  c = cfg.replace(attention_impl="cudnn")
  if name == "ragged":
    c = c.replace(cudnn_packing="ragged")
  worst = 0.0
  for b, t, n in docs[:12]:
    alone = np.asarray(Transformer(c).apply({"params": params},
                                            batch["inputs"][b:b + 1, t:t + n]), np.float32)[0]
    worst = max(worst, np.abs(alone - out["cudnn"][2][b, t:t + n]).max() / np.abs(alone).max())
  print(f"cudnn packed vs each document alone: max rel diff {worst:.2e}")
  ok &= worst < 2e-2
  return bool(ok)


def main() -> int:
  ok = [check(pad) for pad in (False, True)]
  print("device:", jax.devices()[0].device_kind, "OK" if all(ok) else "FAILED")
  return 0 if all(ok) else 1


if __name__ == "__main__":
  sys.exit(main())
