"""How much compute growth saved: the paper's speedup from two runs' logged losses.

Each run's `metrics.jsonl` holds its evaluation losses against cumulative training
FLOPs; a grow run's large stage already counts its small stage's FLOPs, and its
curve is the small stage's points followed by the large stage's. With `F(run)` the
FLOPs a run needs to first reach the target loss (linearly interpolated between
logged evaluations), Du et al. define

    speedup = F(scratch) / F(grown) - 1,   and the FLOPs saved = 1 - F(grown) / F(scratch).

The target defaults to the scratch run's final evaluation loss.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from etils import epath

METRICS_FILE = "metrics.jsonl"


def _read_points(path: str) -> dict[int, tuple[float, float]]:
  """step -> (flops, eval_loss) of the steps with a finite evaluation loss.

  The last record of a step wins (a resumed run appends its replayed steps again).
  """
  last = {}
  for lineno, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno} is not JSON ({e}).") from e
    last[int(record["step"])] = record
  return {step: (float(r["flops"]), float(r["eval_loss"])) for step, r in last.items()
          if r.get("eval_loss") is not None and r.get("flops") is not None
          and math.isfinite(r["eval_loss"])}


def stage_dirs(root: epath.Path) -> list[str]:
  """A grow run's stage dirs in order: small/ large/ (one growth) or stage_0/ stage_1/ ...
  (several, `growth.stages`)."""
  numbered = sorted((int(p.name[6:]), p.name) for p in (root.glob("stage_*") if
                    root.is_dir() else []) if p.name[6:].isdigit())
  return ["small"] + [name for _, name in numbered] + ["large"]


def metrics_files(run: str) -> list[str]:
  """The metrics files of a run (local or gs://): a file itself, a run dir, or a grow
  run's stages (small/ + large/, or stage_0/ stage_1/ ...)."""
  root = epath.Path(run)
  if root.is_file():
    return [run]
  files = [root / d / METRICS_FILE for d in stage_dirs(root)]
  files = [str(f) for f in files if f.is_file()]
  if files:
    return files
  single = root / METRICS_FILE
  if single.is_file():
    return [str(single)]
  raise ValueError(f"{run!r} holds no {METRICS_FILE} (nor small/ and large/ ones of a grow "
                   "run); point at a growjax run directory.")


def load_curve(run: str) -> tuple[np.ndarray, np.ndarray]:
  """(cumulative training FLOPs, evaluation loss) of a run, sorted by FLOPs."""
  points = []
  for path in metrics_files(run):
    points += list(_read_points(path).values())
  if not points:
    raise ValueError(f"{run!r} logged no evaluation loss (with FLOPs); train with "
                     "config.train.eval_every > 0 so that the runs can be compared.")
  points.sort()
  flops, loss = zip(*points)
  return np.asarray(flops), np.asarray(loss)


def flops_to_reach(flops: np.ndarray, loss: np.ndarray, target: float) -> float | None:
  """FLOPs at which the curve first reaches `target`, interpolated; None if it never does."""
  hits = np.nonzero(loss <= target)[0]
  if not len(hits):
    return None
  i = int(hits[0])
  if i == 0:
    return float(flops[0])
  f0, f1, l0, l1 = flops[i - 1], flops[i], loss[i - 1], loss[i]
  return float(f0 + (l0 - target) / (l0 - l1) * (f1 - f0))


def _records(path: str) -> list[dict]:
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()
          if line.strip()]


def check_counts_small_stage(grown: str) -> None:
  """Refuses a grown run whose FLOPs leave out its small stage: its speedup would be
  overstated (the small stage's compute is part of what growth costs)."""
  files = metrics_files(grown)
  for before, after in zip(files, files[1:]):   # a grow run's stages, in order
    small = max(float(r["flops"]) for r in _records(before) if r.get("flops") is not None)
    large = min(float(r["flops"]) for r in _records(after) if r.get("flops") is not None)
    if large < small:
      raise ValueError(
          f"--grown={grown}: its large stage's FLOPs start at {large:.4g}, below its small "
          f"stage's {small:.4g}, so they leave out the small stage — log the large stage "
          f"with growjax train from the grown checkpoint (config.train.init_from), which "
          f"carries the small stage's FLOPs.")
  if len(files) > 1:
    return
  if not any(r.get("small_stage_flops") for r in _records(files[0])):
    raise ValueError(
        f"--grown={grown} is one run whose metrics carry no small stage's FLOPs "
        f"(small_stage_flops) — point --grown at the grow run's workdir (with small/ and "
        f"large/), or train the large model from the grown checkpoint with "
        f"config.train.init_from.")


SHAPE_FIELDS = ("num_layers", "embed_dim", "mlp_dim", "num_heads", "num_kv_heads",
                "vocab_size")


def _final_model(run: str) -> dict | None:
  """The model sizes in a run's latest checkpoint meta (a grow run: its large stage's);
  None when the run has no checkpoints (e.g. metrics alone)."""
  from growjax import checkpoint as ckpt_lib
  root = epath.Path(run)
  if root.is_file():
    root = root.parent
  for d in [root / d / "checkpoints" for d in reversed(stage_dirs(root))] + [
      root / "checkpoints"]:
    if d.is_dir():
      try:
        directory, step = ckpt_lib.resolve(str(d))
      except ValueError:
        return None
      model = ckpt_lib.read_meta(directory, step).get("model") or {}
      return {f: model.get(f) for f in SHAPE_FIELDS}
  return None


def check_same_model(scratch: str, grown: str) -> None:
  """Refuses two runs whose final models differ (the speedup compares one model trained
  two ways); prints a note and skips the check when a run has no checkpoints."""
  shapes = {name: _final_model(run) for name, run in (("scratch", scratch), ("grown", grown))}
  missing = [name for name, shape in shapes.items() if shape is None]
  if missing:
    print(f"note: not checking that both runs train the same model: no checkpoints in "
          f"the {' and '.join(missing)} run")
    return
  if shapes["scratch"] != shapes["grown"]:
    fmt = lambda s: ", ".join(f"{k}={v}" for k, v in s.items())
    raise ValueError(
        f"the runs train different models: --scratch={scratch} has ({fmt(shapes['scratch'])}), "
        f"--grown={grown} ends with ({fmt(shapes['grown'])}) — compare a scratch run of the "
        f"grown run's final model")


def compare(scratch: str, grown: str, target_loss: float | None = None) -> dict:
  """FLOPs to reach the target for both runs, the paper's speedup and the FLOPs saved."""
  check_counts_small_stage(grown)
  check_same_model(scratch, grown)
  s_flops, s_loss = load_curve(scratch)
  g_flops, g_loss = load_curve(grown)
  target = float(s_loss[-1]) if target_loss is None else float(target_loss)
  s_reach = flops_to_reach(s_flops, s_loss, target)
  if s_reach is None:
    raise ValueError(f"the scratch run {scratch!r} never reaches the target loss {target:.4f} "
                     f"(its best is {s_loss.min():.4f}); choose a higher --target_loss.")
  g_reach = flops_to_reach(g_flops, g_loss, target)
  if g_reach is None:
    raise ValueError(f"the grown run {grown!r} never reaches the target loss {target:.4f} "
                     f"(its best is {g_loss.min():.4f} at {g_flops[g_loss.argmin()]:.3g} FLOPs); "
                     "train it longer or choose a higher --target_loss.")
  return {"target_loss": target, "scratch_flops": s_reach, "grown_flops": g_reach,
          "speedup": s_reach / g_reach - 1.0, "flops_saved": 1.0 - g_reach / s_reach,
          "scratch_final_loss": float(s_loss[-1]), "grown_final_loss": float(g_loss[-1]),
          "scratch_total_flops": float(s_flops[-1]), "grown_total_flops": float(g_flops[-1])}


PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install matplotlib)"


def plot(scratch: str, grown: str, result: dict, out_png: str) -> str | None:
  """Loss against FLOPs for both runs, the target line and the two crossings marked;
  None (and one printed line) when matplotlib is not installed."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print(PLOT_SKIPPED)
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for run, label, key, color in ((scratch, "scratch", "scratch_flops", "tab:blue"),
                                 (grown, "grown", "grown_flops", "tab:orange")):
    flops, loss = load_curve(run)
    ax.plot(flops, loss, "-", color=color, label=f"{label}: {os.path.basename(run.rstrip('/'))}")
    ax.plot([result[key]], [result["target_loss"]], "o", color=color)
    ax.annotate(f"{result[key]:.3g}", (result[key], result["target_loss"]),
                textcoords="offset points", xytext=(4, 8), color=color, fontsize=8)
  ax.axhline(result["target_loss"], linestyle="--", color="gray", linewidth=1,
             label=f"target loss {result['target_loss']:.4f}")
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (grown run includes its small stage)")
  ax.set_ylabel("validation loss")
  ax.set_title(f"speedup {result['speedup']:.3f} ({result['speedup']:.1%}); "
               f"{result['flops_saved']:.1%} of FLOPs saved")
  ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=120)
  plt.close(fig)
  out = epath.Path(out_png)          # a local path or gs://
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(png.getvalue())
  return out_png


def report(result: dict) -> str:
  """The printed summary of `compare`'s result."""
  return "\n".join([
      f"target loss            {result['target_loss']:.4f}",
      f"scratch reaches it at  {result['scratch_flops']:.4g} FLOPs "
      f"(final loss {result['scratch_final_loss']:.4f} at {result['scratch_total_flops']:.4g})",
      f"grown reaches it at    {result['grown_flops']:.4g} FLOPs "
      f"(final loss {result['grown_final_loss']:.4f} at {result['grown_total_flops']:.4g})",
      f"speedup                {result['speedup']:.3f} = {result['speedup']:.1%}  "
      "(F_scratch / F_grown - 1)",
      f"FLOPs saved            {result['flops_saved']:.1%}  (1 - F_grown / F_scratch)"])


def run(scratch: str, grown: str, target_loss: float | None = None,
        out_png: str | None = None) -> dict:
  """`growjax speedup`: compare, print the report, write the plot."""
  result = compare(scratch, grown, target_loss)
  print(report(result))
  out_png = out_png or str(epath.Path(grown) / "speedup.png")
  result["plot"] = plot(scratch, grown, result, out_png)
  if result["plot"]:
    print(f"plot: {out_png}")
  return result
