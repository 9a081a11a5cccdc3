"""How a run ended, in one place: a block on the console and `WORKDIR/summary.json`.

Read back from what the run left on disk (the final stage's `metrics.jsonl` and its
newest checkpoint's metadata), so a rerun of a finished run summarises it the same
way. A grow run adds its FLOPs against training the final model from scratch for the
same steps. It computes nothing about training; the stage runner (`growth.stages.run`)
calls it once the run is done.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax.train import metrics as metrics_lib

SUMMARY = "summary.json"


def last_losses(run_dir: str) -> dict[str, Any]:
  """The last logged train loss and eval loss of a run dir's `metrics.jsonl`, with their
  steps (None where never logged); a step logged again by a resume keeps its last line."""
  out = {"train_loss": None, "train_loss_step": None, "eval_loss": None,
         "eval_loss_step": None}
  path = epath.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue   # a line cut by a kill
    if record.get("loss") is not None:
      out["train_loss"], out["train_loss_step"] = record["loss"], record.get("step")
    if record.get("eval_loss") is not None:
      out["eval_loss"], out["eval_loss_step"] = record["eval_loss"], record.get("step")
  return out


def summarize(workdir: str, final_run_dir: str, *, tokens: int, wall_s: float,
              scratch_flops: float | None = None, stages: list[str] | None = None
              ) -> dict[str, Any]:
  """The summary of a finished run whose final model trained in `final_run_dir` (the
  workdir itself, or a grow run's last stage)."""
  directory, step = ckpt_lib.resolve(final_run_dir, say=None)
  meta = ckpt_lib.read_meta(directory, step)
  flops = meta.get("flops_seen")
  out = {"workdir": ckpt_lib.absolute(workdir), "step": step, **last_losses(final_run_dir),
         "tokens": int(tokens), "wall_time_s": round(float(wall_s), 3),
         "checkpoint": f"{directory}/{step}",
         "flops": float(flops) if flops is not None else None}
  if stages:
    out["stages"] = stages
  if scratch_flops:
    out["scratch_flops"] = float(scratch_flops)
    out["flops_vs_scratch"] = (float(flops) / scratch_flops) if flops is not None else None
  return out


def format_summary(s: dict[str, Any]) -> str:
  """The console block."""
  def loss(key):
    return ("-" if s[key] is None else f"{s[key]:.4f} (step {s[key + '_step']})")
  lines = [f"== run finished: {s['workdir']}",
           f"  final train loss  {loss('train_loss')}",
           f"  final eval loss   {loss('eval_loss')}",
           f"  tokens            {s['tokens']:,}",
           f"  wall time         {metrics_lib.format_duration(s['wall_time_s'])} (this call)",
           f"  checkpoint        {s['checkpoint']}"]
  if s.get("flops") is not None:
    line = f"  FLOPs             {s['flops']:.4g}"
    if s.get("scratch_flops"):
      ratio = s["flops_vs_scratch"]
      line += (f" = {ratio:.1%} of training the final model from scratch for the same "
               f"steps ({s['scratch_flops']:.4g})")
    lines.append(line)
  if s.get("stages"):
    lines.append(f"  stages            {' -> '.join(s['stages'])}")
  lines.append(f"  summary           {epath.Path(s['workdir']) / SUMMARY}")
  return "\n".join(lines)


def write(summary: dict[str, Any]) -> str:
  """WORKDIR/summary.json (replaced whole: the latest finish wins)."""
  path = epath.Path(summary["workdir"]) / SUMMARY
  path.write_text(json.dumps(summary, indent=1) + "\n")
  return str(path)
