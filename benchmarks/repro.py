"""The small-scale paper replica in one call: G_stack against scratch, and the eight
operators at equal FLOPs.

  python benchmarks/repro.py --workdir runs/repro                 # both parts
  python benchmarks/repro.py --workdir runs/repro --part main     # scratch vs G_stack only
  python benchmarks/repro.py --workdir runs/repro --part operators \
      --runs width,direct,width,split,depth,llama_pro                # a subset (+ scratch)
  GROWJAX_PYCORPUS_DIR=/tmp/pyc/pycorpus \
  python benchmarks/repro.py --workdir runs/repro --part larger     # the larger point

`main` trains configs/repro/replica.py:run=scratch and :run=stack (same FLOPs), then
runs `growjax speedup` on them (report + loss-vs-FLOPs plot); `larger` does the same
for configs/repro/larger.py (16L x 1024 on the Python-package corpus, BPE tokens) and
writes its plot to docs/repro_larger_speedup.png. `operators` trains the
runs of configs/repro/operators.py (all, or those `--runs` names; scratch always, as
the reference) and prints one table: final validation loss at
equal FLOPs and the FLOPs each needs to reach the scratch run's final loss. Runs that
already finished are resumed (a no-op), so an interrupted call can simply be repeated.
Every run goes through the `growjax train` command, exactly as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def operator_runs(runs: str = "") -> list[str]:
  """The args of configs/repro/operators.py to train, scratch first: every run, or
  those in `runs` (comma-separated args, each `scratch` or DIRECTION,METHOD[,msg][,small=N]:
  'width,direct,width,split,depth,solar,msg,width,random,msg,small=300' is four runs)."""
  sys.path.insert(0, os.path.join(ROOT, "configs", "repro"))
  import operators as op_config
  if not runs:
    return op_config.runs()
  parts, chosen = runs.split(","), ["scratch"]
  while parts:
    head = parts.pop(0)
    if head == "scratch":
      continue
    if not parts:
      raise SystemExit(f"--runs={runs}: {head!r} needs a method (e.g. {head},direct)")
    run = f"{head},{parts.pop(0)}"
    if parts and parts[0] == "msg":
      run += "," + parts.pop(0)
    if parts and parts[0].startswith("small="):
      run += "," + parts.pop(0)
    try:
      op_config.get_config(run)  # refuses an unknown run before anything trains
    except ValueError as e:
      raise SystemExit(f"--runs={runs}: {e}") from None
    chosen += [run] if run not in chosen else []
  return chosen


def train(config: str, workdir: str, overrides: list[str]) -> float:
  """One `growjax train` run; `overrides` are extra `--config.X=Y` flags (smoke tests)."""
  from growjax import cli
  start = time.perf_counter()
  code = cli.main(["growjax", "train", f"--config={os.path.join(ROOT, config)}",
                   f"--workdir={workdir}", *overrides])
  if code:
    raise SystemExit(f"growjax train --config {config} failed ({code})")
  return time.perf_counter() - start


def main_part(workdir: str, overrides: list[str], config: str = "configs/repro/replica.py",
              plot: str = "") -> dict:
  """`config`'s run=scratch and run=stack under `workdir`, then `growjax speedup`
  (its plot into `plot`, default WORKDIR/speedup.png)."""
  from growjax.growth import speedup
  times = {run: train(f"{config}:run={run}", os.path.join(workdir, run), overrides)
           for run in ("scratch", "stack")}
  try:
    result = speedup.run(os.path.join(workdir, "scratch"), os.path.join(workdir, "stack"),
                         None, plot or os.path.join(workdir, "speedup.png"))
  except ValueError as e:  # e.g. G_stack never reached the scratch loss: say so, go on
    print(f"speedup: {e}")
    result = {"error": str(e)}
  return {"wall_s": times, "speedup": result}


def operators_part(workdir: str, overrides: list[str], runs: list[str]) -> list[dict]:
  from growjax.growth import speedup
  rows = []
  base = os.path.join(workdir, "operators")
  for run in runs:
    d = os.path.join(base, run.replace(",", "_"))
    wall = train(f"configs/repro/operators.py:{run}", d, overrides)
    flops, losses = speedup.load_curve(d)
    rows.append({"run": run, "final_eval_loss": float(losses[-1]), "flops": float(flops[-1]),
                 "wall_s": wall, "dir": d})
  target = rows[0]["final_eval_loss"]
  for r in rows:
    f, l = speedup.load_curve(r["dir"])
    reach = speedup.flops_to_reach(f, l, target)
    r["flops_to_scratch_loss"] = reach
    r["saving"] = None if reach is None else 1 - reach / rows[0]["flops"]
  print("\n| run | final val loss (equal FLOPs) | FLOPs | FLOPs to scratch's final loss "
        "| FLOPs saved | wall (s) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    reach = "not reached" if r["flops_to_scratch_loss"] is None else (
        f"{r['flops_to_scratch_loss']:.3g}")
    saved = "-" if r["saving"] is None else f"{r['saving']:.1%}"
    print(f"| {r['run']} | {r['final_eval_loss']:.4f} | {r['flops']:.3g} | {reach} | {saved} "
          f"| {r['wall_s']:.0f} |")
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/repro")
  p.add_argument("--part", default="main,operators",
                 help="comma-separated: main, operators, larger (not in the default: it "
                 "needs $GROWJAX_PYCORPUS_DIR and ~10 GPU minutes)")
  p.add_argument("--plot", default=os.path.join(ROOT, "docs", "repro_larger_speedup.png"),
                 help="larger part: where its loss-vs-FLOPs plot goes")
  p.add_argument("--runs", default="", help="operators part: these runs of "
                 "configs/repro/operators.py only (scratch is always run), e.g. "
                 "width,direct,width,split; default: all")
  p.add_argument("--out", default="", help="write the results as JSON here")
  p.add_argument("overrides", nargs="*", help="--config.X=Y flags for every run (after --)")
  a = p.parse_args()
  sys.path.insert(0, ROOT)
  import jax
  results = {"device": str(jax.devices()[0].device_kind), "date": time.strftime("%Y-%m-%d")}
  parts = a.part.split(",")
  runs = operator_runs(a.runs) if "operators" in parts else []
  if "main" in parts:
    results["main"] = main_part(a.workdir, a.overrides)
  if "operators" in parts:
    results["operators"] = operators_part(a.workdir, a.overrides, runs)
  if "larger" in parts:
    results["larger"] = main_part(os.path.join(a.workdir, "larger"), a.overrides,
                                  "configs/repro/larger.py", a.plot)
  print(f"device: {results['device']}")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
  main()
