"""Does XLA turn growjax's fp8 projections into FP8 GEMMs? (GPU diagnostic)

  python benchmarks/fp8_hlo_check.py

Compiles the train step of a 2-layer model of the 1.1B widths with
`matmul_precision='fp8'` and counts, in the optimized HLO, the cuBLASLt FP8 GEMM
custom calls (`__cublas$lt$matmul$f8`) against the plain GEMMs, and times the step
against bf16.
"""

import re
import time

import jax
import numpy as np

from growjax import config as config_lib
from growjax.train import state as state_lib, train


def compiled_step(precision: str, batch: int = 8):
  cfg = config_lib.base_config("1b")
  cfg.model.num_layers = 2
  cfg.data.seq_len = 2048
  cfg.train.global_batch_size = batch
  cfg.model.remat_policy = "dots"
  cfg.model.matmul_precision = precision
  setup = state_lib.build(cfg)
  state = state_lib.init_state(setup, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, 32000, (batch, 2049), dtype=np.int32)
  arrays = train.to_global({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                           setup.batch_sharding)
  with jax.set_mesh(setup.mesh):
    compiled = train.make_train_step(setup).lower(state, arrays).compile()
    for _ in range(2):
      state, m = compiled(state, arrays)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(10):
      state, m = compiled(state, arrays)
    jax.block_until_ready(m)
  return compiled.as_text(), (time.perf_counter() - t0) / 10


for precision in ("bf16", "fp8"):
  hlo, dt = compiled_step(precision)
  calls = re.findall(r'custom_call_target="([^"]+)"', hlo)
  gemms = {c: calls.count(c) for c in sorted(set(calls)) if "matmul" in c or "gemm" in c}
  e4m3, e5m2 = len(re.findall(r"f8e4m3fn\[", hlo)), len(re.findall(r"f8e5m2\[", hlo))
  print(f"{precision}: step {dt * 1e3:.1f} ms, GEMM custom calls {gemms}, "
        f"f8 tensors in HLO: {e4m3} e4m3, {e5m2} e5m2", flush=True)
print("device:", jax.devices()[0].device_kind)
