"""Train-step throughput and MFU of the shipped configs, one case per subprocess.

  python benchmarks/step_benchmark.py                      # the default table
  python benchmarks/step_benchmark.py --case 1b:8:dots     # preset:batch:remat[:seq[:unroll]]
  python benchmarks/step_benchmark.py --case 1b:24:dots_attention:2048:0   # every layer unrolled
  python benchmarks/step_benchmark.py --depths 6,24,48     # compile time against depth
  python benchmarks/step_benchmark.py --case 1b:24:dots --doc_len 600 [--no_masking]
      # packed documents (mean 600 tokens): attention kept inside each, or not
  python benchmarks/step_benchmark.py --case 1b:24:dots --doc_len 130000 --doc_batches 50 \
      --fast_path on
      # Shakespeare-like windows (plays of ~130k tokens: ~1.6% of 2048-token windows hold a
      # boundary, ~68% of batches of 24 are all single-document rows), timed over 50
      # distinct batches in turn, with the single-document fast path on (or off)

Document lengths are geometric, and each row starts a document: a geometric length is
memoryless, so a row is distributed as a window cut at a random point of a stream of such
documents (the rest of the document it starts in is again geometric). `--cudnn_packing
auto` resolves as `growjax train` does (growjax.train.attention_choice: ragged where it fits the
device limit, else mask; one extra compile); the memory limit follows
XLA_PYTHON_CLIENT_MEM_FRACTION, which this script leaves to the caller (the `growjax`
command sets 0.94 where unset).

Each case runs in its own process (so peak device memory is its own), builds
the real config, creates the sharded state, compiles the real train step, runs
warm-up steps, then times `--steps` steps on a device-resident batch (the data
loader is measured on its own by `--loader`). MFU is model FLOPs per second
(6N + attention, `ModelConfig.flops_per_token`) over the chip's datasheet dense
bf16 peak (H100/H200: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import re
import os
import subprocess
import sys
import time

DEFAULT_CASES = ("tiny:32:none", "125m:32:none", "410m:32:dots", "1b:16:dots", "1b:24:dots")


def run_case(preset: str, batch: int, remat: str, seq: int, steps: int, warmup: int,
             layers: int | None = None, compile_only: bool = False, unroll: int = 1,
             doc_len: int = 0, masking: bool = True, precision: str = "bf16",
             doc_batches: int = 1, fast_path: str = "auto", cudnn_packing: str = "auto",
             sets: tuple[str, ...] = ()) -> dict:
  import jax
  import numpy as np

  from growjax.train import attention_choice
  from growjax import config as config_lib
  from growjax.train import metrics
  from growjax.train import state as state_lib
  from growjax.model import fp8
  from growjax import train

  cfg = config_lib.base_config(preset)
  cfg.data.seq_len = seq
  cfg.train.global_batch_size = batch
  cfg.model.remat_policy = remat
  if layers:
    cfg.model.num_layers = layers
  cfg.model.scan_unroll = unroll
  fp8.set_precision(cfg.model, precision)
  cfg.model.single_document_fast_path = fast_path
  cfg.model.cudnn_packing = cudnn_packing
  for assignment in sets:
    config_lib.set_field(cfg, assignment)
  if doc_len:
    with cfg.unlocked():
      cfg.data.document_masking = masking
    t0 = time.perf_counter()
    cfg = attention_choice.choose(cfg)    # as `growjax train` does ('auto' only)
    choice_s = time.perf_counter() - t0
  setup = state_lib.build(cfg)
  state = state_lib.init_state(setup, jax.random.key(0))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.model.vocab_size, (batch, seq + 1), dtype=np.int32)
  host_batches = []
  for _ in range(doc_batches if doc_len else 1):
    host_batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    if doc_len:
      host_batch.update(documents(rng, batch, seq, doc_len))
    host_batches.append(host_batch)
  batches = [train.to_global(b, setup.batch_sharding) for b in host_batches]
  state = train.fp8_ready(setup, state, batches[0])   # delayed FP8: calibrated histories
  step_fn = train.make_train_step(setup)
  with jax.set_mesh(setup.mesh):
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    result = {"preset": preset, "layers": setup.model_cfg.num_layers, "batch": batch,
              "unroll": unroll, "doc_len": doc_len, "precision": precision,
              "document_masking": bool(doc_len) and masking,
              "seq": seq, "remat": remat, "compile_s": compile_s, "sets": list(sets),
              "params": setup.model_cfg.num_params(),
              "attention_kernels": attention_kernels(compiled.as_text())}
    if doc_len:
      single = [bool(train.single_documents(b)) for b in host_batches]  # the step's own test
      result.update(
          doc_batches=len(batches), cudnn_packing=cfg.model.cudnn_packing,
          choice_s=choice_s, fast_path=train.fast_path_enabled(setup),
          single_document_batches=sum(single),
          # of the timed steps (batches taken in turn), how many were single-document
          timed_single_document_frac=sum(single[i % len(single)] for i in range(
              warmup, warmup + steps)) / steps)
    if compile_only:
      return result
    for i in range(warmup):
      state, m = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
      state, m = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    result["parts_ms"] = _breakdown(setup, state, batches[0], steps) if BREAKDOWN else None
  tps = batch * seq / dt
  fpt = setup.model_cfg.flops_per_token(seq)
  peak = metrics.peak_tflops()
  stats = jax.local_devices()[0].memory_stats() or {}
  result.update(step_s=dt, tokens_per_s=tps, flops_per_token=fpt,
                mfu=metrics.mfu(fpt, tps, jax.device_count(), peak),
                mfu_causal=metrics.mfu(setup.model_cfg.flops_per_token(seq, causal=True), tps,
                                       jax.device_count(), peak),
                tflops_per_chip=fpt * tps / jax.device_count() / 1e12,
                peak_mem_gib=stats.get("peak_bytes_in_use", 0) / 2**30,
                loss=float(m["loss"]), device=jax.devices()[0].device_kind,
                num_devices=jax.device_count())
  return result


BREAKDOWN = os.environ.get("GROWJAX_BENCH_BREAKDOWN") == "1"


def attention_kernels(hlo: str) -> dict:
  """Fused-attention custom calls in the optimized HLO, forward and backward: with remat
  'dots' every layer's forward kernel runs twice (once again in the backward), with
  'dots_attention' once. Counts per scanned layer body, not per layer."""
  calls = re.findall(r'custom_call_target="(__cudnn\$fmha[^"]*)"', hlo)
  return {"forward": sum("Backward" not in c for c in calls),
          "backward": sum("Backward" in c for c in calls)}


def _unroll_note(unroll: int) -> str:
  """The table's remat column: config.model.scan_unroll, where 0 is every layer."""
  return "" if unroll == 1 else ", unrolled" if unroll == 0 else f", unroll {unroll}"


def _masking_note(r: dict) -> str:
  """How a masked case ran: cuDNN path, fast path, single-document share of timed steps."""
  if not r.get("document_masking"):
    return ""
  return (f" ({r['cudnn_packing']}, fast path {'on' if r['fast_path'] else 'off'}, "
          f"{r['timed_single_document_frac']:.0%} single-doc steps)")


def documents(rng, batch: int, seq: int, mean_len: int) -> dict:
  """Packed-window keys for documents of geometric lengths (mean `mean_len`)."""
  import numpy as np
  from growjax.model import ModelConfig
  segment_ids = np.zeros((batch, seq), np.int32)
  positions = np.zeros((batch, seq), np.int32)
  for b in range(batch):
    t, doc = 0, 1
    while t < seq:
      n = min(int(rng.geometric(1.0 / mean_len)), seq - t)
      segment_ids[b, t:t + n], positions[b, t:t + n] = doc, np.arange(n)
      t, doc = t + n, doc + 1
  max_docs = int(segment_ids.max())
  if max_docs > ModelConfig.max_segments:
    print(f"note: up to {max_docs} documents per window; cudnn_packing='ragged' folds "
          f"those past config.model.max_segments={ModelConfig.max_segments}",
          file=sys.stderr)
  return {"segment_ids": segment_ids, "positions": positions,
          "loss_mask": np.ones((batch, seq), np.int32)}


def _time(fn, *args, steps: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps * 1e3


def _breakdown(setup, state, batch, steps: int) -> dict:
  """Milliseconds of the step's parts: forward, forward+backward, optimizer update."""
  import jax
  import optax
  from growjax import sharding
  from growjax import train
  cfg, mcfg = setup.cfg, setup.model_cfg

  def fwd(p, b):
    with sharding.activation_sharding(setup.mesh, setup.rules):
      return train.loss_fn(p, b, mcfg, cfg.train, 0.0)[0]
  fwd_j = jax.jit(fwd)
  grad_j = jax.jit(jax.grad(fwd))
  grads = grad_j(state.params, batch)
  upd_j = jax.jit(lambda g, o, p: optax.apply_updates(p, setup.tx.update(g, o, p)[0]))
  return {"forward": _time(fwd_j, state.params, batch, steps=steps),
          "forward_backward": _time(grad_j, state.params, batch, steps=steps),
          "optimizer": _time(upd_j, grads, state.opt_state, state.params, steps=steps)}


def loader_case(batch: int, seq: int, n: int) -> dict:
  from growjax import config as config_lib
  from growjax import data
  cfg = config_lib.base_config("tiny")
  cfg.data.seq_len = seq
  return {"loader_tokens_per_s": data.loader_tokens_per_second(cfg.data, batch, n),
          "batch": batch, "seq": seq}


def _subprocess(args: list[str]) -> dict:
  out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  return {"error": (out.stderr or out.stdout)[-2000:], "args": args}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--case", action="append", help="preset:batch:remat[:seq[:scan_unroll]]")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--depths", default="", help="compile time for these depths (1b widths)")
  p.add_argument("--loader", action="store_true", help="also time the data loader alone")
  p.add_argument("--out", default="", help="write all results as JSON here")
  p.add_argument("--doc_len", type=int, default=0,
                 help="packed documents of this mean length in tokens (0: no document keys)")
  p.add_argument("--precision", default="bf16", choices=("bf16", "fp8", "fp8_delayed"),
                 help="config.model.matmul_precision of every case (fp8_delayed: fp8 with "
                      "fp8_scaling='delayed', calibrated before timing)")
  p.add_argument("--no_masking", action="store_true",
                 help="with --doc_len: config.data.document_masking=False")
  p.add_argument("--doc_batches", type=int, default=1,
                 help="with --doc_len: this many distinct batches, taken in turn")
  p.add_argument("--fast_path", default="auto", choices=("auto", "on", "off"),
                 help="config.model.single_document_fast_path")
  p.add_argument("--cudnn_packing", default="auto", choices=("auto", "mask", "ragged"),
                 help="config.model.cudnn_packing ('auto': chosen by memory, as in training)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="any config field of every case, e.g. model.remat_prevent_cse=on")
  p.add_argument("--_one", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  case_flags = [f"--doc_len={a.doc_len}", f"--precision={a.precision}",
                f"--doc_batches={a.doc_batches}", f"--fast_path={a.fast_path}",
                f"--cudnn_packing={a.cudnn_packing}"] + (
      ["--no_masking"] if a.no_masking else []) + [f"--set={s}" for s in a.set]

  if a._one:  # child process: one case
    kind, spec = a._one.split("=", 1)
    if kind == "loader":
      b, s = map(int, spec.split(":"))
      res = loader_case(b, s, 200)
    else:
      preset, batch, remat, seq, layers, unroll = spec.split(":")
      res = run_case(preset, int(batch), remat, int(seq), a.steps, a.warmup,
                     int(layers) or None, compile_only=(kind == "compile"), unroll=int(unroll),
                     doc_len=a.doc_len, masking=not a.no_masking, precision=a.precision,
                     doc_batches=a.doc_batches, fast_path=a.fast_path,
                     cudnn_packing=a.cudnn_packing, sets=tuple(a.set))
    print("RESULT " + json.dumps(res), flush=True)
    return

  results = []
  for case in a.case or DEFAULT_CASES:
    parts = case.split(":")
    preset, batch, remat = parts[:3]
    seq = parts[3] if len(parts) > 3 else "2048"
    unroll = parts[4] if len(parts) > 4 else "1"
    r = _subprocess([f"--_one=step={preset}:{batch}:{remat}:{seq}:0:{unroll}", *case_flags,
                     f"--steps={a.steps}",
                     f"--warmup={a.warmup}"])
    results.append(r)
    print(json.dumps(r), flush=True)
  for depth in filter(None, a.depths.split(",")):
    r = _subprocess([f"--_one=compile=1b:8:dots:2048:{depth}:1"])
    results.append(r)
    print(json.dumps(r), flush=True)
  if a.loader:
    r = _subprocess(["--_one=loader=16:2048"])
    results.append(r)
    print(json.dumps(r), flush=True)

  print("\n| config | layers | batch x seq | remat | step (ms) | tokens/s | TFLOP/s/chip | MFU "
        "| MFU causal | peak mem (GiB) | compile (s) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    if "step_s" in r:
      print(f"| {r['preset']} ({r['params'] / 1e6:.0f}M) | {r['layers']} | {r['batch']}x{r['seq']} "
            f"| {r['remat']}{_unroll_note(r.get('unroll', 1))}"
            f"{', ' + r['precision'] if r.get('precision', 'bf16') != 'bf16' else ''}"
            f"{', docs ' + str(r['doc_len']) + (' masked' if r['document_masking'] else ' unmasked') if r.get('doc_len') else ''}"
            f"{_masking_note(r)}{''.join(', ' + x for x in r.get('sets', []))} "
            f"| {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tflops_per_chip']:.0f} | {'-' if r['mfu'] is None else format(r['mfu'], '.1%')} "
            f"| {'-' if r['mfu'] is None else format(r['mfu_causal'], '.1%')} "
            f"| {r['peak_mem_gib']:.1f} | "
            f"{r['compile_s']:.1f} |")
  for r in results:
    if r.get("attention_kernels"):
      k = r["attention_kernels"]
      print(f"{r['preset']} {r['batch']}x{r['seq']} {r['remat']}: fused attention calls in the "
            f"optimized HLO: {k['forward']} forward, {k['backward']} backward")
    if r.get("parts_ms"):
      print(f"{r['preset']} {r['batch']}x{r['seq']} {r['remat']}: step {r['step_s'] * 1e3:.1f} ms = "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in r["parts_ms"].items()))
    if "compile_s" in r and "step_s" not in r:
      print(f"compile time, {r['layers']} layers (1b widths): {r['compile_s']:.1f} s")
    if "loader_tokens_per_s" in r:
      print(f"data loader alone: {r['loader_tokens_per_s']:,.0f} tokens/s")
    if "error" in r:
      print(f"FAILED {r['args']}: {r['error']}")
  if results and "device" in results[0]:
    print(f"device: {results[0]['device']} x{results[0]['num_devices']}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
