"""The grid of a sweep: which runs (scratch, and d x g x method grow runs), each run's
config, its step counts and FLOPs at the scratch run's budget (`growth.budget`), the
checks made before any compute, and the workdir's record of what the grid targets.

Pure planning: nothing here trains; `runner` trains what `plan` lays out.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import ml_collections
from etils import epath

from growjax.growth import budget as budget_lib

PLAN_FILE = "sweep_plan.json"
D_UNITS = ("steps", "tokens")
DEFAULT_G = (2, 4)


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of the grid: the scratch run (g = None) or a grow run."""
  name: str
  g: int | None
  method: str | None
  d_steps: int              # small-stage steps (0 for scratch)
  d_tokens: int             # tokens on the small model
  small_layers: int | None
  steps: int                # config.train.steps: small + large stage for a grow run
  large_steps: int          # steps of the target model
  flops: float              # total training FLOPs, small stage included
  small_flops: float

  @property
  def is_scratch(self) -> bool:
    return self.g is None


def _model(cfg_model: ml_collections.ConfigDict):
  from growjax.model import ModelConfig
  return ModelConfig.from_config(cfg_model)


def tokens_per_step(cfg, small: bool = False) -> int:
  batch = cfg.train.global_batch_size
  if small and cfg.growth.small_global_batch_size:
    batch = cfg.growth.small_global_batch_size
  return int(batch) * int(cfg.data.seq_len)


def target_params(cfg: ml_collections.ConfigDict) -> float:
  """N of the law: the target model's parameters (as `growjax plan` counts them)."""
  return float(_model(cfg.model).num_params())


def scratch_flops(cfg: ml_collections.ConfigDict) -> float:
  return (cfg.train.steps * tokens_per_step(cfg) *
          _model(cfg.model).flops_per_token(cfg.data.seq_len))


def parse_d(values: Sequence[str], unit: str, cfg: ml_collections.ConfigDict
            ) -> list[int]:
  """--d values -> small-stage steps (sorted, unique). Tokens round to whole steps of
  the small stage's batch."""
  if unit not in D_UNITS:
    raise ValueError(f"--d_unit={unit!r} is not one of {', '.join(D_UNITS)} — give "
                     f"--d_unit=steps or --d_unit=tokens")
  per_step = tokens_per_step(cfg, small=True)
  out = set()
  for v in values:
    try:
      x = float(v)
    except ValueError:
      raise ValueError(f"--d entry {v!r} is not a number — give small-stage {unit}, e.g. "
                       f"--d=50,150,300") from None
    steps = x if unit == "steps" else x / per_step
    if unit == "steps" and x != int(x):
      raise ValueError(f"--d entry {v!r} is not a whole number of steps — give whole "
                       f"steps, or --d_unit=tokens")
    if round(steps) < 1:
      raise ValueError(f"--d entry {v!r} ({unit}) is below one small-stage step "
                       f"({per_step} tokens) — give d >= 1 step")
    out.add(int(round(steps)))
  if not out:
    raise ValueError("--d is empty — give growth timings, e.g. --d=50,150,300")
  return sorted(out)


def parse_g(values: Sequence[str] | None, num_layers: int) -> list[int]:
  """--g values (default: those of 2 and 4 that divide num_layers), each dividing it."""
  divisors = [k for k in range(2, num_layers + 1) if num_layers % k == 0]
  if not values:
    out = [g for g in DEFAULT_G if num_layers % g == 0]
    if not out:
      raise ValueError(f"config.model.num_layers={num_layers} is divisible by neither 2 nor "
                       f"4 — give --g with factors that divide it"
                       f"{' (' + ', '.join(map(str, divisors)) + ')' if divisors else ''}")
    return out
  out = set()
  for v in values:
    try:
      g = int(v)
    except ValueError:
      raise ValueError(f"--g entry {v!r} is not an integer — give growth factors, e.g. "
                       f"--g=2,4") from None
    if g < 2 or num_layers % g:
      raise ValueError(f"--g={g} does not divide config.model.num_layers={num_layers} into a "
                       f"smaller model — give factors >= 2 that divide it: "
                       f"{', '.join(map(str, divisors)) or 'none (num_layers is 1)'}")
    out.add(g)
  return sorted(out)


def run_config(cfg: ml_collections.ConfigDict, run: SweepRun) -> ml_collections.ConfigDict:
  """The run config of one run of the grid (a whole grow run for a grow run)."""
  c = cfg.copy_and_resolve_references()
  c.growth.enabled = not run.is_scratch
  c.train.steps = run.steps
  if run.is_scratch:
    return c
  small = cfg.model.copy_and_resolve_references()
  small.num_layers = run.small_layers
  c.growth.small_model = small
  c.growth.small_steps = run.d_steps
  c.growth.method = run.method
  if "events" in c.growth:    # one growth per run: the grid, not a gradual schedule
    c.growth.events = ""
  return c


def plan(cfg: ml_collections.ConfigDict, d_steps: Sequence[int], gs: Sequence[int],
         methods: Sequence[str]) -> list[SweepRun]:
  """The scratch run and every grow run at equal FLOPs; refuses, before any compute, a d
  whose small stage alone spends the scratch run's budget."""
  if not cfg.train.eval_every or cfg.train.eval_every <= 0:
    raise ValueError(f"config.train.eval_every={cfg.train.eval_every}: the sweep compares "
                     f"evaluation losses — set config.train.eval_every > 0")
  large = _model(cfg.model)
  seq = int(cfg.data.seq_len)
  tps_large, tps_small = tokens_per_step(cfg), tokens_per_step(cfg, small=True)
  step_flops = tps_large * large.flops_per_token(seq)
  budget = cfg.train.steps * step_flops
  runs = [SweepRun("scratch", None, None, 0, 0, None, int(cfg.train.steps),
                   int(cfg.train.steps), budget, 0.0)]
  for method in methods:
    for g in gs:
      small_layers = large.num_layers // g
      small = dataclasses.replace(large, num_layers=small_layers)
      small_step_flops = tps_small * small.flops_per_token(seq)
      for d in d_steps:
        small_flops = d * small_step_flops
        large_steps = budget_lib.large_steps(cfg.train.steps, step_flops, d,
                                             small_step_flops)
        if large_steps < 1:
          max_d = budget_lib.largest_small_steps(cfg.train.steps, step_flops,
                                                 small_step_flops)
          raise ValueError(
              f"--d={d} steps ({d * tps_small} tokens) at g={g}: the small stage "
              f"({small_layers} layers, {small_flops:.4g} FLOPs) leaves no step of the "
              f"scratch run's budget "
              f"({budget:.4g} FLOPs, config.train.steps={cfg.train.steps}) for the target "
              f"model — give d <= {max_d} steps at g={g}")
        runs.append(SweepRun(
            f"d{d}_g{g}_{method}", g, method, d, d * tps_small, small_layers, d + large_steps,
            large_steps, small_flops + large_steps * step_flops, small_flops))
  return runs


def check(cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun], num_devices: int) -> None:
  """Every run's config as its stages will check it (model, mesh, growth), before any
  compute; an error names the run."""
  from growjax import config as config_lib
  from growjax.growth import stages
  for run in runs:
    c = run_config(cfg, run)
    try:
      if run.is_scratch:
        config_lib.validate(c, num_devices)
        continue
      config_lib.validate(c, num_devices)
      config_lib.validate(stages.small_stage_config(c), num_devices)
      stages.check_schedule(c)
    except ValueError as e:
      raise ValueError(f"sweep run {run.name}: {e}") from None


def describe_plan(cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun]) -> str:
  """The grid, each run's step counts and FLOPs (the `--dry_run` output)."""
  large = _model(cfg.model)
  budget = runs[0].flops
  lines = [f"sweep: target {large.num_layers} layers x {large.embed_dim} "
           f"(N = {target_params(cfg):.4g} params), {cfg.train.steps} steps of "
           f"{tokens_per_step(cfg)} tokens, budget C = {budget:.4g} FLOPs; "
           f"{len(runs)} runs",
           f"  {'run':<22}{'g':>3}{'small':>7}{'d steps':>9}{'d tokens':>11}"
           f"{'large steps':>13}{'steps':>8}{'FLOPs':>11}{'/ scratch':>11}"]
  for r in runs:
    lines.append(
        f"  {r.name:<22}{r.g or '-':>3}{r.small_layers or '-':>7}{r.d_steps or '-':>9}"
        f"{r.d_tokens or '-':>11}{r.large_steps:>13}{r.steps:>8}{r.flops:>11.4g}"
        f"{r.flops / budget:>11.4f}")
  total_flops = sum(r.flops for r in runs)
  total_steps = sum(r.steps for r in runs)
  lines.append(f"  total: {total_steps} steps ({sum(r.d_steps for r in runs)} small-stage, "
               f"{sum(r.large_steps for r in runs)} target-model), {total_flops:.4g} FLOPs "
               f"({total_flops / budget:.3g} x the scratch run)")
  return "\n".join(lines)


def select(runs: Sequence[SweepRun], names: Sequence[str]) -> list[SweepRun]:
  """The named runs of the grid (`--only`), the scratch run always first: a d sweep and a g
  sweep need not be a whole d x g grid."""
  known = {r.name: r for r in runs}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"--only={','.join(names)}: {', '.join(unknown)} not in the grid — "
                     f"choose from {', '.join(known)}")
  return [runs[0]] + [r for r in runs[1:] if r.name in names]


def _signature(cfg: ml_collections.ConfigDict) -> dict:
  """What makes two sweeps comparable: the target model, steps, batch and data."""
  return {"model": dataclasses.asdict(_model(cfg.model)), "steps": int(cfg.train.steps),
          "global_batch_size": int(cfg.train.global_batch_size),
          "seq_len": int(cfg.data.seq_len), "seed": int(cfg.seed),
          "data": json.loads(cfg.data.to_json_best_effort())}


def record_plan(workdir: str, cfg: ml_collections.ConfigDict, runs: Sequence[SweepRun]
                ) -> None:
  """Writes sweep_plan.json; refuses a workdir that holds a sweep of another target."""
  path = epath.Path(workdir) / PLAN_FILE
  sig = _signature(cfg)
  known = {}
  if path.exists():
    old = json.loads(path.read_text())
    if old.get("target") != sig:
      diff = sorted(k for k in sig if old.get("target", {}).get(k) != sig[k])
      raise ValueError(
          f"--workdir={workdir} holds a sweep of another target ({', '.join(diff)} differ "
          f"from {PLAN_FILE}) — give a new --workdir, or the config that sweep ran")
    known = {r["name"]: r for r in old.get("runs", [])}
  known.update({r.name: dataclasses.asdict(r) for r in runs})
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"target": sig, "runs": list(known.values())}, indent=1))


def run_dir(workdir: str, run: SweepRun) -> str:
  return str(epath.Path(workdir) / run.name)


def is_done(workdir: str, run: SweepRun) -> bool:
  """A run is done when its (target-model) checkpoints hold its last step."""
  from growjax import checkpoint as ckpt_lib
  sub = "checkpoints" if run.is_scratch else "large/checkpoints"
  return ckpt_lib.latest_complete_step(str(epath.Path(run_dir(workdir, run)) / sub)) == run.steps

