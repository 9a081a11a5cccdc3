"""Eval-loss curves of several `growjax train` workdirs, and each one's gap to the first.

  python benchmarks/plot_loss_runs.py --out curves.png bf16=runs/a fp8=runs/b ...

Reads each workdir's metrics.jsonl; prints the eval losses side by side with the relative
gap of every run to the first (the reference), and draws both panels. Used for the FP8
scalings on CPU (benchmarks/RESULTS.md), where fp8_loss_curve.py's GPU model is too big.
"""

from __future__ import annotations

import argparse
import json


def eval_curve(workdir: str) -> dict[int, float]:
  out = {}
  with open(f"{workdir}/metrics.jsonl") as f:
    for line in f:
      row = json.loads(line)
      if row.get("eval_loss") is not None:
        out[int(row["step"])] = float(row["eval_loss"])
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="NAME=WORKDIR; the first is the reference")
  p.add_argument("--out", required=True, help="the PNG to write")
  p.add_argument("--title", default="")
  a = p.parse_args()
  runs = dict(r.split("=", 1) for r in a.runs)
  curves = {name: eval_curve(d) for name, d in runs.items()}
  ref_name = next(iter(curves))
  ref = curves[ref_name]
  steps = sorted(set.intersection(*(set(c) for c in curves.values())))
  gaps = {n: {s: (c[s] - ref[s]) / ref[s] for s in steps} for n, c in curves.items()
          if n != ref_name}
  print("step | " + " | ".join(curves) + " | " + " | ".join(f"{n} gap" for n in gaps))
  for s in steps:
    print(f"{s} | " + " | ".join(f"{c[s]:.4f}" for c in curves.values()) + " | "
          + " | ".join(f"{100 * g[s]:+.2f}%" for g in gaps.values()))
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  for name, c in curves.items():
    ax.plot(steps, [c[s] for s in steps], marker="o", ms=3, label=name)
  ax.set_xlabel("step"), ax.set_ylabel("eval loss"), ax.legend()
  for name, g in gaps.items():
    bx.plot(steps, [100 * g[s] for s in steps], ".-", label=name)
  bx.axhline(1, color="r", ls=":"), bx.axhline(-1, color="r", ls=":")
  bx.set_xlabel("step"), bx.set_ylabel(f"eval loss minus {ref_name} (%)"), bx.legend()
  fig.suptitle(a.title)
  fig.tight_layout()
  fig.savefig(a.out, dpi=110)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
