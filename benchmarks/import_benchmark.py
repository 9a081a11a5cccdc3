"""Peak host memory and time of `growjax import-hf` on a 1.1B TinyLlama-shaped checkpoint.

  nice python benchmarks/import_benchmark.py [--dir /tmp/growjax_import_bench] [--dtype bf16]

Writes random TinyLlama-1.1B-shaped weights (22 layers x 2048, 32 heads / 4 kv, mlp
5632, vocab 32000, untied; one model.safetensors, as TinyLlama ships) with numpy, one
tensor at a time, then runs `growjax import-hf` in a child process and reports its
wall time and RSS high-water mark (the child's `ru_maxrss`; polled every 0.1 s, the
peaks of its anonymous memory and of its file-backed pages, i.e. the memory-mapped
safetensors), and deletes everything.
On a CPU-only machine the "device" is host memory too: the imported float32 params
(4.4 GB) are part of the peak; on an accelerator they live in device memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

SHAPE = dict(vocab=32000, embed=2048, mlp=5632, layers=22, heads=32, kv_heads=4, head_dim=64)


def tensor_shapes(s: dict) -> dict[str, tuple[int, ...]]:
  e, h = s["embed"], s["head_dim"]
  out = {"model.embed_tokens.weight": (s["vocab"], e), "model.norm.weight": (e,),
         "lm_head.weight": (s["vocab"], e)}
  for i in range(s["layers"]):
    p = f"model.layers.{i}."
    out.update({p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
                p + "self_attn.q_proj.weight": (s["heads"] * h, e),
                p + "self_attn.k_proj.weight": (s["kv_heads"] * h, e),
                p + "self_attn.v_proj.weight": (s["kv_heads"] * h, e),
                p + "self_attn.o_proj.weight": (e, s["heads"] * h),
                p + "mlp.gate_proj.weight": (s["mlp"], e), p + "mlp.up_proj.weight": (s["mlp"], e),
                p + "mlp.down_proj.weight": (e, s["mlp"])})
  return out


def write_checkpoint(d: str, dtype: str) -> int:
  """config.json + one model.safetensors written tensor by tensor (the format: an 8-byte
  header length, a JSON header of dtype / shape / offsets, the raw little-endian bytes)."""
  import ml_dtypes
  np_dtype = {"bf16": ml_dtypes.bfloat16, "f32": np.float32}[dtype]
  st_dtype = {"bf16": "BF16", "f32": "F32"}[dtype]
  shapes = tensor_shapes(SHAPE)
  size = np.dtype(np_dtype).itemsize
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape in shapes.items():
    n = int(np.prod(shape)) * size
    header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  rng = np.random.default_rng(0)
  with open(os.path.join(d, "model.safetensors"), "wb") as f:
    f.write(len(raw).to_bytes(8, "little") + raw)
    for name, shape in shapes.items():
      if name.endswith("norm.weight"):
        value = np.ones(shape, np.float32)
      else:
        value = rng.standard_normal(shape, np.float32) * 0.02
      f.write(value.astype(np_dtype).tobytes())
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": SHAPE["vocab"], "hidden_size": SHAPE["embed"],
            "intermediate_size": SHAPE["mlp"], "num_hidden_layers": SHAPE["layers"],
            "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"],
            "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
            "torch_dtype": {"bf16": "bfloat16", "f32": "float32"}[dtype],
            "bos_token_id": 1, "eos_token_id": 2}
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(config, f)
  return offset


def _status_kib(pid: int, key: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dir", default="/tmp/growjax_import_bench")
  ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
  ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
  ap.add_argument("--layers", type=int, default=SHAPE["layers"],
                  help="fewer layers for a quick trial (22: the 1.1B shape)")
  args = ap.parse_args()
  SHAPE["layers"] = args.layers
  src, dst = os.path.join(args.dir, "hf"), os.path.join(args.dir, "ck")
  shutil.rmtree(args.dir, ignore_errors=True)
  os.makedirs(src)
  try:
    t0 = time.perf_counter()
    weight_bytes = write_checkpoint(src, args.dtype)
    t_gen = time.perf_counter() - t0
    exe = [sys.executable, "-m", "growjax", "import-hf", f"--from={src}", f"--to={dst}"]
    t0 = time.perf_counter()
    child = subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0}
    while child.poll() is None:   # anonymous memory vs pages of the mapped safetensors
      peaks = {k: max(v, _status_kib(child.pid, k)) for k, v in peaks.items()}
      time.sleep(0.1)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - t0
    if child.returncode:
      print(stdout[-2000:], stderr[-2000:], file=sys.stderr)
      return 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    ck_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(dst) for f in fs)
    params = sum(int(np.prod(s)) for s in tensor_shapes(SHAPE).values())
    print(json.dumps({
        "params": params, "source_dtype": args.dtype, "source_bytes": weight_bytes,
        "float32_params_bytes": params * 4, "import_seconds": round(seconds, 1),
        "peak_rss_bytes": peak, "peak_rss_gib": round(peak / 2**30, 2),
        "peak_rss_anon_gib": round(peaks["RssAnon"] / 2**20, 2),
        "peak_rss_file_gib": round(peaks["RssFile"] / 2**20, 2),
        "checkpoint_bytes": ck_bytes, "generate_seconds": round(t_gen, 1),
        "import_log": stdout.strip().splitlines()[-1:]}))
  finally:
    if not args.keep:
      shutil.rmtree(args.dir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
