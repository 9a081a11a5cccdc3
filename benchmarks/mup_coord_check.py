"""μP's coordinate check (Yang et al. 2022, "Tensor Programs V", section 7), on CPU.

For each width (depth fixed) and each depth (width fixed), under SP and under μP
(CompleteP depth scaling, base 64 x 2), a toy LLaMA takes a few Adam steps at a
constant learning rate on a fixed random batch; the RMS of the change of every
block's output and of the logits is recorded per step. Under μP the curves lie on
each other across widths and depths; under SP they grow with the width.

  python benchmarks/mup_coord_check.py --out docs/mup_coord_check   # ~5 min on 2 cores

Writes <out>.json (every run's per-step RMS) and <out>.png (the plot in docs/).
"""

from __future__ import annotations

import argparse
import json

from growjax.train import mup_check


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--widths", default="64,128,256,512,1024")
  p.add_argument("--depths", default="2,4,8,16")
  p.add_argument("--width_for_depths", type=int, default=128)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--out", default="docs/mup_coord_check")
  a = p.parse_args()
  runs = []
  for par in ("sp", "mup"):
    for w in [int(x) for x in a.widths.split(",")]:
      runs.append(mup_check.coord_check(mup_check.toy_config(w, 2, par), a.lr, a.steps))
      print(par, "width", w, {k: round(v, 4) for k, v in runs[-1]["steps"][-1].items()
                              if k in ("d_logits", "d_layer1")}, flush=True)
    for d in [int(x) for x in a.depths.split(",")]:
      runs.append(mup_check.coord_check(mup_check.toy_config(a.width_for_depths, d, par),
                                        a.lr, a.steps))
      print(par, "depth", d, {k: round(v, 4) for k, v in runs[-1]["steps"][-1].items()
                              if k in ("d_logits", "d_hidden")}, flush=True)
  with open(a.out + ".json", "w") as f:
    json.dump({"lr": a.lr, "steps": a.steps, "runs": runs}, f, indent=1)
  plot(runs, a)


def plot(runs, a) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  widths = [int(x) for x in a.widths.split(",")]
  depths = [int(x) for x in a.depths.split(",")]
  fig, axes = plt.subplots(2, 4, figsize=(16, 7))
  for row, par in enumerate(("sp", "mup")):
    for col, (key, along, values) in enumerate((("d_logits", "width", widths),
                                                ("d_layer1", "width", widths),
                                                ("d_logits", "depth", depths),
                                                ("d_hidden", "depth", depths))):
      ax = axes[row, col]
      for t in range(1, a.steps + 1):
        ys = [next(r for r in runs if r["parametrization"] == par and r[along] == v
                   and (along == "depth" or r["depth"] == 2)
                   and (along == "width" or r["width"] == a.width_for_depths))
              ["steps"][t][key] for v in values]
        ax.plot(values, ys, marker="o", label=f"step {t}")
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_xlabel(along)
      ax.set_title(f"{par.upper()}: RMS of {key[2:]}'s change")
      if row == 0 and col == 0:
        ax.legend()
  fig.suptitle(f"coordinate check, Adam lr {a.lr}: flat under μP, growing under SP")
  fig.tight_layout()
  fig.savefig(a.out + ".png", dpi=80)
  print("wrote", a.out + ".png")


if __name__ == "__main__":
  main()
