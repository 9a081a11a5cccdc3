"""Where a train step's device time goes: traces a few steps and ranks the GPU kernels.

  python benchmarks/profile_step.py --case 1b:16:dots [--steps 3] [--top 30]
  python benchmarks/profile_step.py --case 1b:24:dots --precision fp8 --json OUT.json
  python benchmarks/profile_step.py --case 1b:24:dots_attention:2048:0 --explain 8
      # every layer unrolled; the 8 costliest XLA fusions shown as their HLO: result and
      # operand shapes and the ops fused, so a reduction or cast is traced to its tensor

Runs the same setup as step_benchmark.py, records `jax.profiler` trace of `--steps`
steps (a Perfetto JSON, readable without TensorBoard), and prints the kernels with the
largest total device time, grouped by kind (matmul, attention, fusion, copy, ...), so a
performance change starts from a measurement instead of a guess.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = [("attention", re.compile(r"cudnn|flash|fmha|sdpa|attn", re.I)),
         ("matmul", re.compile(r"gemm|cutlass|sm90_xmma|nvjet|matmul|dot", re.I)),
         ("copy/transpose", re.compile(r"copy|transpose|memcpy|memset", re.I)),
         ("scatter/gather", re.compile(r"scatter|gather|dynamic", re.I)),
         ("reduce", re.compile(r"reduce", re.I)),
         ("cast (convert)", re.compile(r"convert", re.I)),
         ("fusion (elementwise)", re.compile(r"fusion|loop|input", re.I))]


def kind_of(name: str) -> str:
  for kind, pattern in KINDS:
    if pattern.search(name):
      return kind
  return "other"


def device_events(trace_dir: str) -> list[tuple[str, float]]:
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True) or \
      glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise SystemExit(f"no trace JSON under {trace_dir}")
  with gzip.open(paths[0]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  pnames = {e["pid"]: e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu = {pid for pid, n in pnames.items() if re.search(r"/device:GPU|GPU:|stream", n, re.I)}
  return [(e["name"], float(e.get("dur", 0.0))) for e in events
          if e.get("ph") == "X" and e.get("pid") in gpu]


def fusion_of(name: str, hlo_text: str) -> str | None:
  """The optimized HLO behind a kernel named `name` (XLA names a fusion's kernel after
  its instruction): the instruction's line, cut to its result, operands and callee,
  followed by the opcodes of the fused computation it calls and the JAX op its root came
  from. None if not found."""
  # The kernel of instruction `fusion.9` is named `fusion_9` in the trace.
  candidates = dict.fromkeys([name, re.sub(r"_(\d+)$", r".\1", name)])
  for candidate in candidates:
    line = re.search(rf"^\s*(?:ROOT )?%?{re.escape(candidate)} = (.*)$", hlo_text, re.M)
    if line:
      break
  else:
    return None
  text = re.sub(r", metadata=\{.*?\}", "", line.group(1))
  callee = re.search(r"calls=%?([\w.-]+)", text)
  if not callee:
    return text[:400]
  body = re.search(rf"^%?{re.escape(callee.group(1))} [^\n]*\{{\n(.*?)^\}}", hlo_text,
                   re.M | re.S)
  ops = collections.Counter(re.findall(r"= [\w\[\]{},:. ()]*? ([a-z][\w-]*)\(",
                                       body.group(1))) if body else {}
  fused = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.items())
  root = re.search(r'^\s*ROOT [^\n]*op_name="([^"]*)"', body.group(1), re.M) if body else None
  return (f"{text[:400]}\n      fuses: {fused or '?'}"
          + (f"\n      root from: {root.group(1)[:300]}" if root else ""))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--case", default="1b:16:dots",
                 help="preset:batch:remat[:seq[:scan_unroll]] (scan_unroll 0: every layer)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=30)
  p.add_argument("--precision", default="bf16", choices=("bf16", "fp8", "fp8_delayed"),
                 help="config.model.matmul_precision (fp8_delayed: with fp8_scaling='delayed')")
  p.add_argument("--json", default="", help="also write the breakdown as JSON here")
  p.add_argument("--explain", type=int, default=0,
                 help="print the optimized HLO of the N costliest non-GEMM, non-attention "
                      "kernels (XLA fusions)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="any config field, e.g. model.remat_prevent_cse=on")
  p.add_argument("--hlo_out", default="",
                 help="also write the step's optimized HLO here (gzip), to read offline")
  a = p.parse_args()
  import jax
  import numpy as np

  from growjax import config as config_lib
  from growjax.train import state as state_lib
  from growjax.model import fp8
  from growjax import train

  parts = a.case.split(":")
  preset, batch, remat = parts[0], int(parts[1]), parts[2]
  seq = int(parts[3]) if len(parts) > 3 else 2048
  cfg = config_lib.base_config(preset)
  cfg.model.scan_unroll = int(parts[4]) if len(parts) > 4 else 1
  cfg.data.seq_len, cfg.train.global_batch_size, cfg.model.remat_policy = seq, batch, remat
  fp8.set_precision(cfg.model, a.precision)
  for assignment in a.set:
    config_lib.set_field(cfg, assignment)
  setup = state_lib.build(cfg)
  state = state_lib.init_state(setup, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (batch, seq + 1),
                                             dtype=np.int32)
  data = train.to_global({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                         setup.batch_sharding)
  state = train.fp8_ready(setup, state, data)   # delayed FP8: calibrated histories
  step = train.make_train_step(setup)
  with jax.set_mesh(setup.mesh):
    for _ in range(3):
      state, m = step(state, data)
    jax.block_until_ready(m)
    trace_dir = tempfile.mkdtemp(prefix="growjax-trace-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(a.steps):
        state, m = step(state, data)
      jax.block_until_ready(m)

  events = device_events(trace_dir)
  total = sum(d for _, d in events) or 1.0
  by_kind, by_name = collections.Counter(), collections.Counter()
  counts = collections.Counter()
  for name, dur in events:
    by_kind[kind_of(name)] += dur
    by_name[name[:90]] += dur
    counts[name[:90]] += 1
  print(f"{a.case} {a.precision}: {total / a.steps / 1e3:.1f} ms of kernel time per step "
        f"({len(events) // a.steps} kernels/step)")
  for kind, dur in by_kind.most_common():
    print(f"  {kind:<22} {dur / a.steps / 1e3:8.1f} ms  {dur / total:6.1%}")
  print(f"top {a.top} kernels (ms per step, calls per step):")
  for name, dur in by_name.most_common(a.top):
    print(f"  {dur / a.steps / 1e3:8.2f} ms {counts[name] // a.steps:5d}x  {name}")
  explained = {}
  if a.explain or a.hlo_out:
    with jax.set_mesh(setup.mesh):
      hlo = step.lower(state, data).compile().as_text()
    if a.hlo_out:
      with gzip.open(a.hlo_out, "wt") as f:
        f.write(hlo)
  if a.explain:
    xla_kernels = [n for n, _ in by_name.most_common()
                   if kind_of(n) not in ("matmul", "attention") and not n.startswith("memcpy")]
    print(f"the {a.explain} costliest XLA fusions, as optimized HLO:")
    for name in xla_kernels[:a.explain]:
      explained[name] = fusion_of(name, hlo)
      print(f"  {by_name[name] / a.steps / 1e3:8.2f} ms  {name}\n      "
            f"{explained[name] or '(not an instruction of the step: a library kernel)'}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump({"case": a.case, "precision": a.precision, "device": str(jax.devices()[0]),
                 "ms_per_step": total / a.steps / 1e3,
                 "by_kind_ms": {k: d / a.steps / 1e3 for k, d in by_kind.most_common()},
                 "top": [[n, d / a.steps / 1e3, counts[n] // a.steps]
                         for n, d in by_name.most_common(a.top)],
                 "explained": explained}, f, indent=1)


if __name__ == "__main__":
  main()
