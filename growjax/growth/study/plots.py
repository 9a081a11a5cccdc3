"""The sweep's three plots (PNG in its workdir): loss against FLOPs for every run, the
saving against d and against g. matplotlib is optional: without it they are skipped.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath

from growjax.growth import speedup

PLOTS = ("loss_vs_flops.png", "saving_vs_d.png", "saving_vs_g.png")


def plot(summary: dict, workdir: str) -> list[str]:
  """Loss against FLOPs for every run, the saving against d and against g (PNG in the
  sweep's workdir); [] (and one printed line) without matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print(speedup.PLOT_SKIPPED)
    return []
  root = epath.Path(workdir)
  written = []

  def save(fig, name):
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    (root / name).write_bytes(png.getvalue())
    written.append(str(root / name))

  rows = summary["runs"]
  fig, ax = plt.subplots(figsize=(8, 5))
  for r in rows:
    flops, loss = speedup.load_curve(str(root / r["name"]))
    style = dict(color="black", linewidth=2.2) if r["g"] is None else dict(linewidth=1)
    ax.plot(flops, loss, label=r["name"], **style)
  ax.axhline(summary["target_loss"], linestyle="--", color="gray", linewidth=1,
             label=f"target {summary['target_loss']:.4f}")
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (grow runs include their small stage)")
  ax.set_ylabel("validation loss")
  ax.set_title("every run of the sweep at equal FLOPs")
  ax.legend(fontsize=7, ncol=2)
  save(fig, PLOTS[0])

  grown = [r for r in rows if not r["g"] is None]
  groups = sorted({(r["method"], r["g"]) for r in grown})
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, g in groups:
    mine = sorted((r["d_tokens"], r["flops_saved"]) for r in grown
                  if (r["method"], r["g"]) == (method, g))
    ax.plot([d for d, _ in mine], [np.nan if s is None else 100 * s for _, s in mine], "o-",
            label=f"g={g} {method}")
  ax.axhline(0, color="gray", linewidth=1)
  ax.set_xscale("log")
  ax.set_xlabel("growth timing d (tokens on the small model)")
  ax.set_ylabel("FLOPs saved to reach scratch's loss (%)")
  ax.set_title("saving against d (missing: never reached the target)")
  ax.legend()
  save(fig, PLOTS[1])

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method in dict.fromkeys(m for m, _ in groups):
    gs = sorted({r["g"] for r in grown if r["method"] == method})
    for r in grown:
      if r["method"] == method and r["flops_saved"] is not None:
        ax.plot(r["g"], 100 * r["flops_saved"], ".", color="gray")
    best = summary["best_d_per_g"][method]
    ax.plot(gs, [np.nan if best[str(g)] is None else 100 * best[str(g)]["flops_saved"]
                 for g in gs], "o-", label=f"{method}: best d per g")
    # The fair comparison of g: the same d at every g it was measured at.
    for d in sorted({r["d_steps"] for r in grown if r["method"] == method}):
      at_d = sorted((r["g"], r["flops_saved"]) for r in grown
                    if r["method"] == method and r["d_steps"] == d)
      if len(at_d) > 1:
        ax.plot([g for g, _ in at_d], [np.nan if v is None else 100 * v for _, v in at_d],
                "s--", linewidth=1, markersize=4, label=f"{method}: d = {d} steps")
  ax.axhline(0, color="gray", linewidth=1)
  ax.set_xticks(sorted({r["g"] for r in grown}))
  ax.set_xlabel("growth factor g")
  ax.set_ylabel("FLOPs saved to reach scratch's loss (%)")
  ax.set_title("saving against g (grey dots: every d; dashed: one d at every g)")
  ax.legend()
  save(fig, PLOTS[2])
  return written

