"""Which document-masked attention path fits and how fast (GPU diagnostic).

  python benchmarks/doc_masking_memory.py [--batch 24] [--steps 5]

Compiles the 1.1B train step on packed windows (documents of mean 600 tokens) with
each candidate attention path and prints the compiled per-device memory
(`compiled.memory_analysis()`) and, where it fits, the step time:
  ragged   cuDNN packed layout (q_seqlen / q_offsets), padding zeroed around it;
           raggedN: with config.model.max_segments=N
  mask     cuDNN flash attention with a (B, 1, T, T) boolean mask (the default; JAX
           >= 0.11.2 no longer has cuDNN compute the mask's bias gradient, jax#39512)
  xla      XLA softmax attention with the mask (the CPU path)
  none     no document keys (reference)
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from growjax import config as config_lib
from growjax.train import state as state_lib, train
from growjax.model import attention   # masked_attention is swapped below

import step_benchmark  # benchmarks/, beside this script


def _xla_path(q, k, v, segment_ids_BxT, impl, cfg):
  same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=same[:, None], is_causal=True,
                                      implementation="xla")


def run(variant: str, batch: int, steps: int) -> dict:
  original = attention.masked_attention
  if variant == "xla":
    attention.masked_attention = _xla_path
  try:
    cfg = config_lib.base_config("1b")
    cfg.data.seq_len = 2048
    cfg.train.global_batch_size = batch
    cfg.model.remat_policy = "dots"
    if variant.startswith("ragged"):
      cfg.model.cudnn_packing = "ragged"
      if variant[6:]:
        cfg.model.max_segments = int(variant[6:])
    setup = state_lib.build(cfg)
    state = state_lib.init_state(setup, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32000, (batch, 2049), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    if variant != "none":
      host.update(step_benchmark.documents(rng, batch, 2048, 600))
    arrays = train.to_global(host, setup.batch_sharding)
    step = train.make_train_step(setup)
    with jax.set_mesh(setup.mesh):
      compiled = step.lower(state, arrays).compile()
      mem = compiled.memory_analysis()
      out = {"variant": variant, "batch": batch,
             "temp_gib": mem.temp_size_in_bytes / 2**30,
             "args_gib": mem.argument_size_in_bytes / 2**30}
      try:
        for _ in range(2):
          state, m = compiled(state, arrays)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
          state, m = compiled(state, arrays)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
        out.update(step_s=dt, tokens_per_s=batch * 2048 / dt, loss=float(m["loss"]))
      except Exception as e:  # noqa: BLE001 - report and go on
        out["error"] = str(e)[:300]
    return out
  finally:
    attention.masked_attention = original


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=24)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--variants", default="ragged,mask,xla,none")
  a = p.parse_args()
  for v in a.variants.split(","):
    try:
      print(json.dumps(run(v, a.batch, a.steps)), flush=True)
    except Exception as e:  # noqa: BLE001
      print(json.dumps({"variant": v, "error": str(e)[:400]}), flush=True)
  print("device:", jax.devices()[0].device_kind)


if __name__ == "__main__":
  main()
