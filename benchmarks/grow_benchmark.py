"""Offline growth from an orbax checkpoint: wall time and peak memory.

  python benchmarks/grow_benchmark.py --case 6l_2048:24l_2048 --case 1b:1b@88

A case is SRC_PRESET:DST_PRESET[@LAYERS]. For each, a fresh small train state
(params + AdamW state) is written as a growjax checkpoint, then `growjax grow`'s
code path restores it, grows it by G_stack (and optimizer state reset, as the
paper) and writes the large checkpoint. Reported: time to read, grow and write,
their ratio to read + write alone (growth should be bounded by checkpoint I/O),
and peak host / device memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def run_case(spec: str, method: str, workdir: str) -> dict:
  import jax

  from growjax import checkpoint as ckpt_lib
  from growjax import config as config_lib
  from growjax.growth import offline
  from growjax.train import state as state_lib

  src_preset, dst = spec.split(":")
  dst_preset, _, layers = dst.partition("@")
  src_cfg = config_lib.base_config(src_preset)
  src_cfg.data.seq_len = 2048
  dst_cfg = config_lib.base_config(dst_preset)
  dst_cfg.data.seq_len = 2048
  if layers:
    dst_cfg.model.num_layers = int(layers)
  src_dir, dst_dir = os.path.join(workdir, "src"), os.path.join(workdir, "dst")
  setup = state_lib.build(src_cfg)
  state = state_lib.init_state(setup, jax.random.key(0))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  ck = ckpt_lib.Checkpoints(src_dir, use_async=False)
  ck.save(100, state, {}, state_lib.run_meta(setup), force=True)
  ck.wait()
  ck.close()
  src_write_s = time.perf_counter() - t0
  del state
  report = offline.grow_checkpoint(src_dir, dst_dir, dst_cfg, method=method,
                                           log=lambda s: print(s, file=sys.stderr))
  size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(dst_dir) for f in fs)
  report.update(case=spec, method=method, src_write_s=src_write_s, dst_bytes=size,
                io_ratio=report["total_s"] / (report["read_s"] + report["write_s"]),
                device=jax.devices()[0].device_kind)
  return report


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--case", action="append", help="SRC:DST[@LAYERS], presets of growjax.config")
  p.add_argument("--method", default="stack")
  p.add_argument("--workdir", default="", help="where checkpoints go (default: a temp dir)")
  p.add_argument("--_one", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a._one:
    print("RESULT " + json.dumps(run_case(a._one, a.method, a.workdir)), flush=True)
    return
  rows = []
  for case in a.case or ("6l_2048:24l_2048", "1b:1b@88"):
    work = tempfile.mkdtemp(dir=a.workdir or None)
    out = subprocess.run([sys.executable, __file__, f"--_one={case}", f"--method={a.method}",
                          f"--workdir={work}"], capture_output=True, text=True)
    shutil.rmtree(work, ignore_errors=True)
    res = next((json.loads(l[7:]) for l in out.stdout.splitlines() if l.startswith("RESULT ")),
               {"case": case, "error": out.stderr[-3000:]})
    print(json.dumps(res), flush=True)
    rows.append(res)
  print("\n| growth | params | read (s) | grow (s) | write (s) | total / (read+write) "
        "| peak host (GiB) | peak device (GiB) | grown ckpt (GiB) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['case']} | FAILED: {r['error'][-500:]} |")
      continue
    print(f"| {r['case']} ({r['method']}) | {r['src_params'] / 1e9:.2f}B -> "
          f"{r['dst_params'] / 1e9:.2f}B | {r['read_s']:.1f} | {r['grow_s']:.2f} | "
          f"{r['write_s']:.1f} | {r['io_ratio']:.2f} | {r['peak_host_bytes'] / 2**30:.1f} | "
          f"{(r['peak_device_bytes'] or 0) / 2**30:.1f} | {r['dst_bytes'] / 2**30:.1f} |")


if __name__ == "__main__":
  main()
