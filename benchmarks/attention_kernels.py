"""Causal attention kernels at the model's shapes, forward and forward + backward.

  python benchmarks/attention_kernels.py --shape 1b --batch 24 [--kernels K,...] [--json OUT]

Attention is 17-20% of the 1.1B step on an H100 (benchmarks/RESULTS.md): this times the
kernels a GPU can run it with, on the step's own shapes (grouped-query heads, head_dim
64, sequence 2048, bf16), so the trainer's choice (`config.model.attention_impl`) rests
on a measurement:
  cudnn          jax.nn.dot_product_attention(implementation='cudnn'), what growjax and
                 MaxText use on GPUs;
  xla            the same call, implementation='xla' (the reference);
  pallas_triton  jax.experimental.pallas.ops.gpu.attention.mha (Triton); it has no
                 grouped-query heads, so k and v are repeated first (that copy is timed);
  pallas_mosaic  jax.experimental.pallas.ops.gpu.attention_mgpu (Mosaic GPU, Hopper
                 warpgroup kernels); q is scaled by 1/sqrt(head_dim) first (timed).
Each kernel's output is checked against xla's (max |difference| / max |xla|) before it
is timed; a kernel this JAX or device cannot run is reported with the reason, not fatal.
TFLOP/s count the causal half of the 4·B·H·T²·d forward FLOPs (2.5x that for the
backward). Nothing here changes the trainer; it names the faster path to wire in.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

KERNELS = ("cudnn", "xla", "pallas_triton", "pallas_mosaic")
# (heads, kv heads, head_dim) of growjax.config's presets
SHAPES = {"1b": (32, 4, 64), "410m": (16, 16, 64), "24l_2048": (16, 16, 128),
          "tiny": (4, 2, 32)}


def kernel(name: str, heads: int, kv_heads: int, head_dim: int):
  """`(q, k, v) -> out`, all (batch, seq, heads, head_dim), causal."""
  if name in ("cudnn", "xla"):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                        implementation=name)
  groups = heads // kv_heads
  if name == "pallas_triton":
    from jax.experimental.pallas.ops.gpu import attention as triton_attention

    def run(q, k, v):
      k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
      return triton_attention.mha(q, k, v, None, sm_scale=1.0 / math.sqrt(head_dim),
                                  causal=True)
    return run
  if name == "pallas_mosaic":
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    config = attention_mgpu.TuningConfig(
        block_q=64, block_kv=128, max_concurrent_steps=2, causal=True,
        block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)

    def run(q, k, v):
      q = (q * (1.0 / math.sqrt(head_dim))).astype(q.dtype)
      return attention_mgpu.attention(q, k, v, config)
    return run
  raise ValueError(f"--kernels: {name!r} is not one of {', '.join(KERNELS)}")


def timed(fn, *args, steps: int) -> float:
  """Median milliseconds of `fn(*args)` over `steps` calls, after one warm call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)) * 1e3


def _first_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def measure(name: str, q, k, v, reference, steps: int, heads: int, kv_heads: int,
            head_dim: int) -> dict:
  attend = kernel(name, heads, kv_heads, head_dim)
  fwd = jax.jit(attend)
  loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) ** 2)
  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  b, t, _, d = q.shape
  flops_fwd = 4 * b * heads * t * t * d / 2          # causal: half the score matrix
  row = {"kernel": name}
  try:
    out = fwd(q, k, v)
    row["rel_error"] = float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference))
                             / jnp.max(jnp.abs(reference)))
    row["forward_ms"] = timed(fwd, q, k, v, steps=steps)
    row["forward_tflops"] = flops_fwd / row["forward_ms"] / 1e9
  except Exception as e:  # noqa: BLE001 - a kernel this JAX or device lacks is a result
    row["error"] = f"forward: {_first_line(e)}"
    return row
  try:
    row["forward_backward_ms"] = timed(fwd_bwd, q, k, v, steps=steps)
    row["forward_backward_tflops"] = 3.5 * flops_fwd / row["forward_backward_ms"] / 1e9
  except Exception as e:  # noqa: BLE001
    row["error"] = f"backward: {_first_line(e)}"
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="1b", choices=sorted(SHAPES))
  p.add_argument("--batch", type=int, default=24)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--kernels", default=",".join(KERNELS))
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--json", default="")
  a = p.parse_args()
  heads, kv_heads, head_dim = SHAPES[a.shape]
  dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (a.batch, a.seq, heads, head_dim), dtype)
  k, v = (jax.random.normal(kk, (a.batch, a.seq, kv_heads, head_dim), dtype)
          for kk in keys[1:])
  reference = jax.jit(kernel("xla", heads, kv_heads, head_dim))(q, k, v).astype(jnp.float32)
  rows = [measure(n, q, k, v, reference, a.steps, heads, kv_heads, head_dim)
          for n in a.kernels.split(",")]
  device = str(jax.devices()[0].device_kind)
  print(f"{a.shape}: batch {a.batch} x {a.seq}, {heads} heads / {kv_heads} kv, head_dim "
        f"{head_dim}, {jnp.dtype(dtype).name}, causal, on {device}")
  print("| kernel | forward ms | TFLOP/s | fwd+bwd ms | TFLOP/s | rel. error vs xla |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    if "forward_ms" not in r:
      print(f"| {r['kernel']} | - | - | - | - | {r['error']} |")
      continue
    fb = (f"{r['forward_backward_ms']:.2f} | {r['forward_backward_tflops']:.0f}"
          if "forward_backward_ms" in r else f"- | {r.get('error', '')}")
    print(f"| {r['kernel']} | {r['forward_ms']:.2f} | {r['forward_tflops']:.0f} | {fb} | "
          f"{r['rel_error']:.1e} |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"shape": a.shape, "batch": a.batch, "seq": a.seq, "device": device,
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
