"""Peak host memory and wall time of streamed offline growth against reading + writing.

  python benchmarks/grow_memory_benchmark.py --case 1b:1b@88 --params_only
  python benchmarks/grow_memory_benchmark.py --case 410m:410m@96 --params_only --whole
  python benchmarks/grow_memory_benchmark.py --case 7b@2:7b@8 --params_only --whole
  python benchmarks/grow_memory_benchmark.py --plan 7b:128l_4096 --plan 1b:1b@88

A case is SRC_PRESET[@LAYERS]:DST_PRESET[@LAYERS] (presets of growjax.config with
their layer count changed; G_stack), e.g. 7b@2:7b@8 is the 7B shape grown x4 in depth
as 7b -> 128l_4096 (28B) is, at 1/16 of the layers. Each step
runs in its own process on 8 fake CPU devices (a mesh fsdp=8), and reports that
process's peak resident memory (ru_maxrss) and wall time:

  source   a fresh small train state written as a growjax checkpoint (made and written
           piece by piece, so making it needs no more memory than growing)
  read     the whole source restored at once (orbax; the I/O half of the baseline)
  grow     `growjax grow`'s code path, streamed (the default)
  copy     the grown checkpoint read back and written again piece by piece (same bytes
           as the grown state: the write half of the baseline; its write time is used)
  whole    (--whole) the same growth through the whole-state path (stream=False)

Ratio = grow wall / (read + copy's write). `--params_only` swaps AdamW for a stateless
SGD (optimizer state: a step count), so the 1.1B -> 4B case fits this machine's disk;
the bound is per array, so Adam's moments add pieces, not peak. `--plan A:B` prints the
streamed plan of a growth too large to run here (no arrays): its largest piece, i.e.
the predicted peak above the fixed overhead measured on the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

GiB = 2 ** 30


def _configs(case: str):
  from growjax import config as config_lib
  cfgs = []
  for side in case.split(":"):
    preset, _, layers = side.partition("@")
    c = config_lib.base_config(preset)
    c.data.seq_len = 2048
    c.train.global_batch_size = 8
    if layers:
      c.model.num_layers = int(layers)
    cfgs.append(c)
  return tuple(cfgs)


def _params_only() -> None:
  import optax
  from growjax.train import optimizer as opt_lib
  opt_lib.make_optimizer = lambda opt_cfg, schedule, axes: optax.sgd(schedule)


def _streamed_copy(pieces, writer) -> tuple[float, float]:
  read_s = write_s = 0.0
  while True:
    t = time.perf_counter()
    pairs = next(pieces, None)
    if pairs is None:
      return read_s, write_s
    read_s += time.perf_counter() - t
    t = time.perf_counter()
    writer.write(pairs)
    del pairs
    write_s += time.perf_counter() - t


def step_source(case: str, work: str) -> dict:
  import jax
  from growjax import checkpoint_pieces as ckpt_pieces
  from growjax.train import state as state_lib
  from growjax.growth import stream
  src_cfg, _ = _configs(case)
  setup = state_lib.build(src_cfg)
  fresh = lambda _, rng, __: state_lib._fresh_state(setup.model_cfg, setup.tx, rng)
  rng = jax.random.key(0)
  with jax.set_mesh(setup.mesh):
    plan = stream.plan(fresh, {}, rng, setup.abstract_state, setup.state_shardings)
    writer = ckpt_pieces.PieceWriter(os.path.join(work, "src"))
    _, write_s = _streamed_copy(stream.run(plan, lambda paths: {}, rng), writer)
  writer.finish(100, {}, state_lib.run_meta(setup))
  return {"write_s": write_s, "params": setup.model_cfg.num_params()}


def step_read(case: str, work: str) -> dict:
  import jax
  from growjax import checkpoint as ckpt_lib
  from growjax.train import state as state_lib
  src_cfg, _ = _configs(case)
  setup = state_lib.build(src_cfg)
  t = time.perf_counter()
  ck = ckpt_lib.Checkpoints(os.path.join(work, "src"), use_async=False)
  state, _, _ = ck.restore(100, setup.abstract_state)
  jax.block_until_ready(state)
  return {"read_s": time.perf_counter() - t}


def step_grow(case: str, work: str, stream_it: bool) -> dict:
  from growjax.growth import offline
  _, dst_cfg = _configs(case)
  out = os.path.join(work, "dst" if stream_it else "dst_whole")
  r = offline.grow_checkpoint(os.path.join(work, "src"), out, dst_cfg, stream=stream_it,
                              log=lambda s: print(s, file=sys.stderr))
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
  if not stream_it:
    shutil.rmtree(out)
  return {k: r[k] for k in ("read_s", "grow_s", "write_s", "total_s", "pieces",
                            "dst_params", "src_params")} | {"dst_bytes": size}


def step_copy(case: str, work: str) -> dict:
  """Reads the grown checkpoint back piece by piece and writes it again (pure I/O)."""
  import jax
  from growjax import checkpoint as ckpt_lib
  from growjax import checkpoint_pieces as ckpt_pieces
  from growjax.train import state as state_lib
  from growjax.growth import stream
  _, dst_cfg = _configs(case)
  setup = state_lib.build(dst_cfg)
  src = os.path.join(work, "dst")
  step = ckpt_lib.latest_complete_step(src)
  ident = lambda state, rng, _: state
  rng = jax.random.key(0)
  read = lambda paths: ckpt_pieces.restore_leaves(src, step, setup.abstract_state, paths)
  with jax.set_mesh(setup.mesh):
    plan = stream.plan(ident, setup.abstract_state, rng, setup.abstract_state,
                       setup.state_shardings)
    writer = ckpt_pieces.PieceWriter(os.path.join(work, "copy"))
    read_s, write_s = _streamed_copy(stream.run(plan, read, rng), writer)
  t = time.perf_counter()
  writer.finish(step, {}, {})
  write_s += time.perf_counter() - t
  shutil.rmtree(os.path.join(work, "copy"))
  return {"read_s": read_s, "write_s": write_s, "largest_array_bytes": max(
      int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))}


def plan_only(case: str) -> dict:
  """The streamed plan of a growth, from shapes alone (nothing is allocated)."""
  import jax
  from growjax.train import state as state_lib
  from growjax.growth import offline
  from growjax.growth import spec as spec_lib
  src_cfg, dst_cfg = _configs(case)
  large = state_lib.build(dst_cfg)
  meta = {"model": src_cfg.model.to_dict(), "config": src_cfg.to_dict()}
  src_model, src_tx, src_abstract = offline.source_setup(meta, large)
  spec = spec_lib.resolve(src_model, large.model_cfg, "stack", None, None)
  from growjax.growth import stream
  fn = offline.grow_function(spec, src_tx, large, opt_state="reset", schedule="continue")
  with jax.set_mesh(large.mesh):
    p = stream.plan(fn, src_abstract, jax.random.key(0), large.abstract_state,
                    large.state_shardings)
  total = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(large.abstract_state))
  largest = max(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(large.abstract_state))
  return {"case": case, "dst_params": large.model_cfg.num_params(), "pieces": len(p.pieces),
          "grown_state_bytes": total, "largest_array_bytes": largest,
          "largest_piece_bytes": p.peak_piece_bytes}


def _child(step: str, case: str, work: str, params_only: bool) -> dict:
  cmd = [sys.executable, __file__, f"--_step={step}", f"--case={case}", f"--workdir={work}"]
  cmd += ["--params_only"] if params_only else []
  t = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.perf_counter() - t
  res = next((json.loads(l[7:]) for l in out.stdout.splitlines() if l.startswith("RESULT ")),
             None)
  if res is None:
    raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
  res["wall_s"] = wall
  return res


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--case", action="append", default=[])
  p.add_argument("--plan", action="append", default=[])
  p.add_argument("--params_only", action="store_true")
  p.add_argument("--whole", action="store_true", help="also run the whole-state path")
  p.add_argument("--workdir", default="")
  p.add_argument("--_step", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if a._step:
    if a.params_only:
      _params_only()
    [case] = a.case
    fn = {"source": step_source, "read": step_read, "copy": step_copy,
          "grow": lambda c, w: step_grow(c, w, True),
          "whole": lambda c, w: step_grow(c, w, False)}[a._step]
    res = fn(case, a.workdir)
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(res), flush=True)
    return
  for case in a.plan:
    print(json.dumps(plan_only(case)), flush=True)
  for case in a.case:
    work = tempfile.mkdtemp(dir=a.workdir or None, prefix="grow-mem-")
    try:
      rows = {s: _child(s, case, work, a.params_only)
              for s in ["source", "read", "grow", "copy"] + (["whole"] if a.whole else [])}
    finally:
      shutil.rmtree(work, ignore_errors=True)
    g, base = rows["grow"], rows["read"]["read_s"] + rows["copy"]["write_s"]
    largest = rows["copy"]["largest_array_bytes"]
    print(json.dumps({"case": case, "params_only": a.params_only, **{
        f"{s}": r for s, r in rows.items()}}), flush=True)
    print(f"\n{case}{' (params only)' if a.params_only else ''}: "
          f"{g['src_params'] / 1e9:.2f}B -> {g['dst_params'] / 1e9:.2f}B, grown ckpt "
          f"{g['dst_bytes'] / GiB:.1f} GiB, largest array {largest / GiB:.2f} GiB, "
          f"{g['pieces']} pieces")
    print("| step | wall (s) | peak host RSS (GiB) | peak / largest array |")
    print("|---|---|---|---|")
    for s, r in rows.items():
      print(f"| {s} | {r['wall_s']:.1f} | {r['peak_rss_bytes'] / GiB:.2f} | "
            f"{r['peak_rss_bytes'] / largest:.2f} |")
    print(f"grow (in-process {g['total_s']:.1f} s: read {g['read_s']:.1f}, grow "
          f"{g['grow_s']:.1f}, write {g['write_s']:.1f}) / (read {rows['read']['read_s']:.1f}"
          f" + write {rows['copy']['write_s']:.1f}) = {g['total_s'] / base:.2f}")


if __name__ == "__main__":
  main()
