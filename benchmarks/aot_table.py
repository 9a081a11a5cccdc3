"""The AOT table: shipped configs and grow recipes compiled by libtpu for their TPU slices,
on this host (no TPU), with `growjax compile --json`, one process per case.

  pip install -e '.[tpu]'                                   # libtpu
  python benchmarks/aot_table.py                            # every case (long on a laptop)
  python benchmarks/aot_table.py --case 1b --case 7b_v5e    # some
  python benchmarks/aot_table.py --list

Each case is one `growjax compile` command line (printed), so any row can be rerun by
hand. Reported per program and chip: params, optimizer state, temporaries, total, the
chip's HBM, the compile time (of this host: a slow or busy CPU compiles slower, the
memory figures do not change), and the compiler's OOM line where it refused. The
fake-CPU plan this replaces is benchmarks/memory_plan.py (RESULTS.md sets them side by
side).
The `llama3_8b` case adds the compiler's step-time bound (`--bound`) for a
Llama-3-8B-shaped step on v6e-256, beside MaxText's published measurement there (45.46%
MFU, 7,207 tokens/s per chip; MaxText docs/reference/models/tiering.md). Results are
appended as JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

LLAMA3_8B = ["--config.model.vocab_size=128256", "--config.model.num_kv_heads=8",
             "--config.model.mlp_dim=14336", "--config.model.rope_theta=500000",
             "--config.data.seq_len=8192"]

# name: (config, topology, slices, overrides, flags)
CASES = {
    "tiny": ("configs/tiny.py", "v5e-8", 1, [], []),
    "grow_tiny": ("configs/grow.py:recipe=tiny", "v5e-8", 1, [], []),
    "gradual": ("configs/grow.py:recipe=gradual", "v5e-8", 1, [], []),
    "1b_v5e8": ("configs/llama.py:size=1b,batch=16", "v5e-8", 1, [], []),
    "1b_v5e16": ("configs/llama.py:size=1b,batch=32", "v5e-16", 1, [], []),
    "1b_v5e256": ("configs/llama.py:size=1b,batch=512", "v5e-256", 1, [], []),
    "1b_v5p8": ("configs/llama.py:size=1b,batch=16", "v5p-8", 1, [], []),
    "1b_v6e8": ("configs/llama.py:size=1b,batch=16", "v6e-8", 1, [], []),
    "1b_v6e256": ("configs/llama.py:size=1b,batch=512", "v6e-256", 1, [], []),
    "7b_v5e8": ("configs/llama.py:size=7b,batch=8", "v5e-8", 1, [], []),
    "7b_v5e256": ("configs/llama.py:size=7b,batch=256", "v5e-256", 1, [], []),
    "7b_v5p128": ("configs/llama.py:size=7b,batch=64", "v5p-128", 1, [], []),
    "7b_v5p256": ("configs/llama.py:size=7b,batch=256", "v5p-256", 1, [], []),
    "7b_v5p256x2": ("configs/llama.py:size=7b,batch=512", "v5p-256", 2, [], []),
    "7b_v6e256": ("configs/llama.py:size=7b,batch=256", "v6e-256", 1, [], []),
    "grow_7b_v5p128": ("configs/grow.py:recipe=7b,batch=128", "v5p-128", 1, [], []),
    "grow_28b_v5p256": ("configs/grow.py:recipe=28b,batch=128", "v5p-256", 1, [], []),
    "llama3_8b": ("configs/llama.py:size=7b,batch=256", "v6e-256", 1, LLAMA3_8B,
                  ["--bound"]),
}


def command(name: str) -> list[str]:
  config, topology, slices, overrides, extra = CASES[name]
  return [sys.executable, "-m", "growjax", "compile", f"--config={config}",
          f"--topology={topology}", f"--slices={slices}", "--json", *overrides, *extra]


def run_case(name: str) -> dict:
  cmd = command(name)
  print("$ " + " ".join(cmd[2:]).replace("-m growjax", "growjax"), flush=True)
  t0 = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  wall = time.perf_counter() - t0
  text = out.stdout
  start = text.find("{")
  report = json.loads(text[start:]) if start >= 0 else {}
  report.update(case=name, command=" ".join(cmd[3:]), wall_s=wall, returncode=out.returncode,
                error=out.stderr.strip().splitlines()[-1] if out.returncode else "")
  return report


def print_report(r: dict) -> None:
  for p in r.get("programs", []):
    if p["fits"] and p["total"]:
      print(f"  {p['name']:<20} {p['params'] / GIB:7.2f} {p['opt_state'] / GIB:7.2f} "
            f"{p['temporaries'] / GIB:7.2f} {p['total'] / GIB:7.2f} / {p['hbm'] / GIB:5.2f} "
            f"GiB  {p['compile_s']:6.1f} s  {p['what']}")
    elif not p["fits"]:
      print(f"  {p['name']:<20} does not fit: {p['oom']}  ({p['compile_s']:.1f} s)")
  for label, b in (r.get("bound") or {}).items():
    if b["valid"]:
      print(f"  bound ({b['kind']}): {b['step_s'] * 1e3:.0f} ms/step, "
            f"{b['tokens_per_s_per_chip']:,.0f} tok/s/chip, MFU {b['mfu']:.1%} "
            f"({b['mfu_causal']:.1%} causal); MaxText measured 45.46%, 7,207 tok/s/chip")
    else:
      print(f"  bound: none — {b['why']}")
  if r["returncode"] and not r.get("programs"):
    print(f"  failed: {r['error']}")
  print(f"  wall {r['wall_s']:.0f} s", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--case", action="append", choices=sorted(CASES))
  p.add_argument("--list", action="store_true")
  p.add_argument("--out", default="", help="append each case's JSON report here")
  a = p.parse_args()
  if a.list:
    for name in CASES:
      print(f"{name:<18} growjax " + " ".join(command(name)[3:]))
    return
  for name in a.case or list(CASES):
    r = run_case(name)
    print_report(r)
    if a.out:
      with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
