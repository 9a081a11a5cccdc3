"""The sweep's summary: the printed report of `analysis.analyse`'s result and the
summary JSON (`sweep_summary.json`, also what `--also` reads from other sweeps).
"""

from __future__ import annotations

import json

from etils import epath

from growjax.growth import law as law_lib

SUMMARY_FILE = "sweep_summary.json"


def report(summary: dict) -> str:
  """The printed analysis."""
  t = summary["target"]
  whose = "the scratch run's final" if summary["target_is_scratch_final"] else "--target_loss"
  lines = [f"target loss {summary['target_loss']:.4f} ({whose}; scratch reaches it at "
           f"{summary['scratch_flops_to_target']:.4g} FLOPs)",
           f"  {'run':<22}{'d tokens':>11}{'final loss':>12}{'FLOPs to target':>17}"
           f"{'saved':>9}"]
  for r in summary["runs"]:
    saved = "-" if r["g"] is None else (
        f"{r['flops_saved']:.1%}" if r["flops_saved"] is not None else "never")
    reach = f"{r['flops_to_target']:.4g}" if r["flops_to_target"] is not None else "-"
    lines.append(f"  {r['name']:<22}{r['d_tokens'] or '-':>11}{r['final_loss']:>12.4f}"
                 f"{reach:>17}{saved:>9}")
  for method, per_g in summary["best_d_per_g"].items():
    for g, b in per_g.items():
      if b is None:
        lines.append(f"best d for g={g} ({method}): none reached the target loss")
        continue
      edge = ""
      if b["at_edge"]:
        more = b.get("widen_d_steps") or []
        grid = sorted({r["d_steps"] for r in summary["runs"]
                       if r["g"] == int(g) and r["method"] == method} | set(more))
        edge = (" — at the edge of the grid: the optimum may lie beyond, widen --d"
                + (f", e.g. --d={','.join(map(str, grid))}" if more else ""))
      refined = (f" (parabola through the grid: {b['d_tokens']:.4g} tokens)"
                 if b["how"] == "parabola" else "")
      lines.append(f"best d for g={g} ({method}): {b['d_steps']} steps = "
                   f"{b['grid_d_tokens']:.4g} tokens, {b['flops_saved']:.1%} saved"
                   f"{refined}{edge}")
  best = summary["best"]
  if best is None:
    lines.append("no grow run reached the scratch run's loss: no best g, no law fit — train "
                 "longer (config.train.steps) or try other --d / --g")
    return "\n".join(lines)
  lines.append(f"best g: {best['g']} ({best['method']}), {best['flops_saved']:.1%} of FLOPs "
               f"saved at d = {best['d_steps']} steps")
  fit = law_lib.Fit(**{**summary["law"], "fitted": tuple(summary["law"]["fitted"])})
  others = fit.num_points - 1
  lines.append(f"law point: N = {t['params']:.4g}, C = {t['budget_flops']:.4g}, d = "
               f"{best['d_tokens']:.4g} tokens (the best g's optimum)"
               f"{f'; with {others} point(s) of --also' if others else ''}")
  lines.append(law_lib.describe(fit))
  rec = summary["recommendation"]
  own = abs(rec["budget_flops"] / t["budget_flops"] - 1) < 1e-9
  lines.append(f"recommendation at C = {rec['budget_flops']:.4g} FLOPs"
               f"{' (this sweep' + chr(39) + 's budget)' if own else ''}: g = {rec['g']}, "
               f"d = {rec['d_tokens']:.4g} tokens = {rec['d_steps']} small-stage steps of "
               f"this config (the paper's law: d = {rec['paper_d_tokens']:.4g} tokens)")
  if rec["paper_range_warning"]:
    lines.append(f"  paper's law {rec['paper_range_warning']}")
  return "\n".join(lines)



def write(summary: dict, workdir: str) -> epath.Path:
  """Writes the summary JSON into the sweep's workdir (a rerun overwrites it)."""
  path = epath.Path(workdir) / SUMMARY_FILE
  path.write_text(json.dumps(summary, indent=1))
  return path
