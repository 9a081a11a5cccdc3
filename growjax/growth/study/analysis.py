"""What a finished grid measured: the FLOPs each grow run saved to reach the scratch run's
loss (`growth.speedup`'s arithmetic), the best d for each g (refined by a parabola through
the grid) and the best g, the d to add where the best sits at the grid's edge, the
paper's law fitted to the measured optimum (`growth.law`, with the optima of --also
sweeps) and the d and g it recommends for a budget. Reads run curves; trains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import ml_collections
import numpy as np
from etils import epath

from growjax.growth import law as law_lib
from growjax.growth import speedup
from growjax.growth import timing
from growjax.growth.study.grid import (SweepRun, plan, run_dir, target_params,
                                       tokens_per_step)
from growjax.growth.study.report import SUMMARY_FILE


def best_d(d_tokens: Sequence[float], savings: Sequence[float | None]
           ) -> dict | None:
  """The growth timing with the largest saving. With the best inside the grid and its two
  neighbours measured, the vertex of the parabola through the three (saving against
  log10 d) refines it; `at_edge` says the best is the grid's smallest or largest d (the
  optimum may lie beyond). None when no d reached the target."""
  pairs = sorted((float(d), s) for d, s in zip(d_tokens, savings))
  measured = [(d, s) for d, s in pairs if s is not None]
  if not measured:
    return None
  i = max(range(len(pairs)), key=lambda k: -math.inf if pairs[k][1] is None else pairs[k][1])
  d, s = pairs[i]
  out = {"d_tokens": d, "grid_d_tokens": d, "flops_saved": s, "how": "grid",
         "at_edge": len(pairs) > 1 and i in (0, len(pairs) - 1)}
  if 0 < i < len(pairs) - 1 and pairs[i - 1][1] is not None and pairs[i + 1][1] is not None:
    x = np.log10([pairs[i - 1][0], d, pairs[i + 1][0]])
    y = np.array([pairs[i - 1][1], s, pairs[i + 1][1]])
    curve, slope, _ = np.polyfit(x, y, 2)
    if curve < 0:
      vertex = float(np.clip(-slope / (2 * curve), x[0], x[2]))
      out.update(d_tokens=float(10 ** vertex), how="parabola")
  return out


def widen_d(cfg: ml_collections.ConfigDict, grid_steps: Sequence[int], best_steps: int,
            g: int, method: str) -> list[int]:
  """Two growth timings past the grid's edge where its best d sits, on the grid's own
  spacing (the ratio of the two outermost d on that side), that the budget allows: what
  to add to --d when the optimum may lie beyond."""
  steps = sorted(set(grid_steps))
  if len(steps) < 2:
    return []
  up = best_steps == steps[-1]
  ratio = steps[-1] / steps[-2] if up else steps[1] / steps[0]
  out, d = [], float(best_steps)
  for _ in range(2):
    d = d * ratio if up else d / ratio
    step = int(round(d))
    if step < 1 or step in steps or step in out:
      break
    try:
      plan(cfg, [step], [g], [method])
    except ValueError:
      break
    out.append(step)
  return sorted(out)


def _saving(scratch_curve, target: float, run_path: str) -> dict:
  s_flops, _ = scratch_curve
  s_reach = speedup.flops_to_reach(*scratch_curve, target)
  flops, loss = speedup.load_curve(run_path)
  reach = speedup.flops_to_reach(flops, loss, target)
  out = {"final_loss": float(loss[-1]), "best_loss": float(loss.min()),
         "total_flops": float(flops[-1]), "reached": reach is not None,
         "flops_to_target": reach, "flops_saved": None, "speedup": None}
  if reach is not None:
    out.update(flops_saved=1.0 - reach / s_reach, speedup=s_reach / reach - 1.0)
  return out


def read_summary(sweep: str, flag: str) -> dict:
  """A finished sweep's summary, from its workdir or the file itself (`flag` names
  where the path came from in the refusal)."""
  path = epath.Path(sweep)
  path = path if path.name == SUMMARY_FILE else path / SUMMARY_FILE
  if not path.exists():
    raise ValueError(f"{flag}={sweep}: no {SUMMARY_FILE} there — give the workdir of a "
                     f"finished growjax sweep")
  return json.loads(path.read_text())


def law_points(also: Sequence[str]) -> list[law_lib.Point]:
  """The law points (best d at their N and C) of other finished sweeps (`--also`)."""
  points = []
  for other in also:
    p = read_summary(other, "--also").get("law_point")
    if p:
      points.append(law_lib.Point(p["params"], p["flops"], p["d_tokens"]))
  return points


def analyse(cfg: ml_collections.ConfigDict, workdir: str, runs: Sequence[SweepRun],
            budget_flops: float | None = None, target_loss: float | None = None,
            also: Sequence[str] = ()) -> dict:
  """FLOPs saved by every grow run, the best d per g and the best g, the law fitted to
  the measured optimum (plus the --also sweeps' optima), and the recommendation."""
  scratch, grown = runs[0], [r for r in runs if not r.is_scratch]
  curve = speedup.load_curve(run_dir(workdir, scratch))
  target = float(curve[1][-1]) if target_loss is None else float(target_loss)
  s_reach = speedup.flops_to_reach(*curve, target)
  if s_reach is None:
    raise ValueError(f"the scratch run never reaches --target_loss={target:.4f} (its best is "
                     f"{curve[1].min():.4f}) — give a higher --target_loss")
  rows = []
  for r in runs:
    row = dataclasses.asdict(r)
    row.update(_saving(curve, target, run_dir(workdir, r)))
    if not r.is_scratch:   # where growth stops paying (`crossover`)
      row["small_tokens_per_param"] = r.d_tokens / small_params(cfg, r.small_layers)
      row["beat_scratch"] = bool(row["flops_saved"] is not None and row["flops_saved"] > 0)
    rows.append(row)
  by_g: dict[str, dict[str, dict]] = {}
  for method in dict.fromkeys(r.method for r in grown):
    by_g[method] = {}
    for g in sorted({r.g for r in grown if r.method == method}):
      mine = [row for row in rows if row["g"] == g and row["method"] == method]
      best = best_d([row["d_tokens"] for row in mine], [row["flops_saved"] for row in mine])
      if best is not None:
        best["d_steps"] = next(row["d_steps"] for row in mine
                               if row["d_tokens"] == best["grid_d_tokens"])
        if best["at_edge"]:
          best["widen_d_steps"] = widen_d(cfg, sorted(row["d_steps"] for row in mine),
                                          best["d_steps"], g, method)
      by_g[method][str(g)] = best
  ranked = [(b["flops_saved"], m, int(g)) for m, per_g in by_g.items()
            for g, b in per_g.items() if b is not None]
  params, budget = target_params(cfg), scratch.flops
  summary = {
      "target": {"params": params, "budget_flops": budget, "num_layers": cfg.model.num_layers,
                 "embed_dim": cfg.model.embed_dim, "steps": cfg.train.steps,
                 "tokens_per_step": tokens_per_step(cfg), "seq_len": cfg.data.seq_len},
      "target_loss": target, "target_is_scratch_final": target_loss is None,
      "scratch_flops_to_target": s_reach, "runs": rows,
      "best_d_per_g": by_g, "best": None, "law_point": None, "law": None,
      "paper_law": dict(law_lib.PAPER), "recommendation": None}
  summary["crossover"] = crossover(rows)
  points = list(law_points(also))
  if ranked:
    saved, method, g = max(ranked)
    best = by_g[method][str(g)]
    summary["best"] = {"method": method, "g": g, **best}
    summary["law_point"] = {"params": params, "flops": budget, "d_tokens": best["d_tokens"],
                            "g": g, "method": method}
    points.insert(0, law_lib.Point(params, budget, best["d_tokens"]))
  if points:
    fit = law_lib.fit(points)
    summary["law"] = fit.as_dict()
    if ranked:
      summary["recommendation"] = recommend(cfg, fit, summary["best"]["g"],
                                            budget_flops or budget)
  return summary


def recommend(cfg: ml_collections.ConfigDict, fit: law_lib.Fit, g: int,
              budget_flops: float) -> dict:
  """d (tokens and this config's small-stage steps) from the fitted law at the budget,
  g the sweep's best; the paper's d at the same point beside it."""
  params = target_params(cfg)
  d = law_lib.predict_d(fit.coefficients, params, budget_flops)
  return {"budget_flops": budget_flops, "g": g, "d_tokens": d,
          "d_steps": max(1, round(d / tokens_per_step(cfg, small=True))),
          "paper_d_tokens": law_lib.predict_d(law_lib.PAPER, params, budget_flops),
          "paper_range_warning": timing.fit_range_warning(params, budget_flops)}


def small_params(cfg: ml_collections.ConfigDict, small_layers: int) -> float:
  """The small model's parameters: the target at `small_layers` layers."""
  from growjax.model import ModelConfig
  return float(ModelConfig.from_config(cfg.model).replace(num_layers=small_layers)
               .num_params())


def crossover(rows: Sequence[dict]) -> dict | None:
  """The crossover fit over the grow runs that reached the target (a run that never
  reached it counts as saving -1: scratch won outright), or None with fewer than two
  small-stage lengths."""
  pts = [(r["small_tokens_per_param"], r["flops_saved"] if r["reached"] else -1.0)
         for r in rows if "small_tokens_per_param" in r]
  if len({x for x, _ in pts}) < 2:
    return None
  return law_lib.fit_crossover(*zip(*pts)).as_dict()


def crossover_warning(sweep_dir: str, d_tokens: float, small_params_n: float) -> str:
  """`growjax plan --sweep`: a line on whether d tokens on a small model of
  `small_params_n` parameters lie past the crossover a finished sweep measured."""
  fit = read_summary(sweep_dir, "--sweep").get("crossover")
  x = d_tokens / small_params_n
  if not fit or fit.get("crossover") is None:
    return (f"the sweep at {sweep_dir} shows no crossover (growth paid at every d it "
            f"ran); this plan puts {x:.3g} tokens per small-model parameter")
  if x >= fit["crossover"]:
    return (f"WARNING: this plan puts {x:.3g} tokens per small-model parameter, past the "
            f"crossover {fit['crossover']:.3g} the sweep at {sweep_dir} measured: there "
            f"scratch training beat growth — grow earlier (smaller d) or skip growth")
  return (f"this plan puts {x:.3g} tokens per small-model parameter, below the sweep's "
          f"crossover {fit['crossover']:.3g}: growth paid there")
