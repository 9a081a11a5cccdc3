"""What `growjax train` runs: one stage, or a whole grow run of one or several growths.

A grow run is a schedule of growth events (`schedule`): the run starts with
`config.growth.small_model`, each event grows the current model at a given step
into a deeper one (the last event into `config.model`), and every stage after a
growth starts from the grown checkpoint, continuing the step count, the LR
schedule, the data stream and the FLOPs count (`flops_seen` in the checkpoint
metadata). Each growth is `growth.offline.grow_checkpoint`, each stage
`train.train`; nothing of either is repeated here.

One growth (the two-stage fields `growth.small_steps`, or one event) keeps three
directories under the workdir: `small/` (the base model's run), `grown/` (the grown
checkpoint, written by the same code as `growjax grow`) and `large/` (the large
model's run, started from `grown/`). Several growths keep `stage_0/`, `grown_1/`,
`stage_1/`, `grown_2/`, ... `stage_K/`. Each stage and growth is skipped when its
output is complete, so killing the run at any point and starting it again resumes
at the right stage and step, bit for bit.

Not here: what a growth does (`growth.spec`, `operators`) or how a stage trains
(`train`).
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import ml_collections
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax import distributed
from growjax import faults
from growjax.growth import offline
from growjax import train as train_lib
from growjax.model import ModelConfig
from growjax.train import summary as summary_lib

EVENTS_SYNTAX = ("LAYERS@STEP[:METHOD[:OPT_STATE]], comma-separated, each event deeper and "
                 "later than the one before and the last at config.model.num_layers "
                 "(e.g. '4@100,8@200:stack:grow')")
_EVENT = re.compile(r"(\d+)@(\d+)(?::([\w-]*))?(?::([\w-]*))?")


@dataclasses.dataclass(frozen=True)
class Event:
  """One growth of a run: the stage before it ends at `step`, where the model grows to
  `num_layers` layers by `method`, handing its Adam state over by `opt_state`
  (`growth.opt_state`: reset or grow)."""
  step: int
  num_layers: int
  method: str
  opt_state: str
  text: str = ""   # as written in config.growth.events ('' from the two-stage fields)

  def where(self) -> str:
    return (f"config.growth.events event {self.text!r}" if self.text else
            "config.growth")


def parse_events(text: str, method: str, opt_state: str) -> list[Event]:
  """`config.growth.events` ('LAYERS@STEP[:METHOD[:OPT_STATE]],...') as events; a
  missing or empty METHOD / OPT_STATE is `growth.method` / `growth.opt_state`."""
  events = []
  for item in (s.strip() for s in str(text).split(",")):
    if not item:
      continue
    m = _EVENT.fullmatch(item)
    if not m:
      raise ValueError(f"config.growth.events={text!r}: {item!r} is not an event — write "
                       f"{EVENTS_SYNTAX}")
    events.append(Event(step=int(m[2]), num_layers=int(m[1]), method=m[3] or method,
                        opt_state=m[4] or opt_state, text=item))
  return events


def schedule(cfg: ml_collections.ConfigDict) -> list[Event]:
  """The run's growth events: `config.growth.events`, or else the two-stage fields'
  one growth (`small_steps`, into `config.model`)."""
  g = cfg.growth
  text = str(g.get("events", "") or "").strip()
  if text:
    return parse_events(text, g.method, g.opt_state)
  return [Event(step=int(g.small_steps), num_layers=int(cfg.model.num_layers),
                method=g.method, opt_state=g.opt_state)]


def stage_model(cfg: ml_collections.ConfigDict, events: list[Event], i: int
                ) -> ml_collections.ConfigDict:
  """Stage i's model: `growth.small_model`, then that with each event's layer count,
  and `config.model` for the last stage."""
  if i == len(events):
    return cfg.model
  model = cfg.growth.small_model.copy_and_resolve_references()
  if i > 0:
    model.num_layers = events[i - 1].num_layers
  return model


def stage_config(cfg: ml_collections.ConfigDict, events: list[Event], i: int,
                 grown_dir: str = "") -> ml_collections.ConfigDict:
  """Stage i's training config. Every stage before the last trains the small model's
  width on `growth.small_mesh` with `growth.small_global_batch_size`, up to the next
  event's step, its LR schedule spanning the whole run so that the next stage continues
  it; a stage after a growth starts from `grown_dir` (`train.init_from`)."""
  c = cfg.copy_and_resolve_references()
  c.growth.enabled = False
  if i > 0:
    c.train.init_from = grown_dir
  if i == len(events):
    return c
  g = cfg.growth
  c.model = stage_model(cfg, events, i)
  c.train.steps = events[i].step
  c.train.global_batch_size = g.small_global_batch_size or cfg.train.global_batch_size
  c.optimizer.decay_steps = cfg.optimizer.decay_steps or cfg.train.steps
  c.mesh = g.small_mesh
  return c


def small_stage_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base model's run (the first stage): its own model, steps, batch and mesh; the LR
  schedule spans the whole run so that the next stage continues it."""
  return stage_config(cfg, schedule(cfg), 0)


def large_stage_config(cfg: ml_collections.ConfigDict, grown_dir: str
                       ) -> ml_collections.ConfigDict:
  """The final model's run (the last stage), started from `grown_dir`."""
  events = schedule(cfg)
  return stage_config(cfg, events, len(events), grown_dir)


def growth_config(cfg: ml_collections.ConfigDict, events: list[Event], i: int
                  ) -> ml_collections.ConfigDict:
  """Growth i (1-based) as a two-stage config: stage i-1's model as `growth.small_model`,
  stage i's as `model`, the event's method and opt_state; a width operator and an
  explicit layer map only where they can apply (the last growth; one growth)."""
  c = cfg.copy_and_resolve_references()
  event = events[i - 1]
  c.growth.small_model = stage_model(cfg, events, i - 1)
  c.model = stage_model(cfg, events, i)
  c.growth.method, c.growth.opt_state = event.method, event.opt_state
  if i < len(events):
    c.growth.width_method = ""
  if len(events) > 1:
    c.growth.layer_map = ()
  return c


def check_schedule(cfg: ml_collections.ConfigDict) -> list[Event]:
  """The run's events, every one checked (`offline.check_grow_run`) before anything
  trains; a bad schedule is one `ValueError` naming the field and the fix."""
  g, steps = cfg.growth, int(cfg.train.steps)
  events = schedule(cfg)
  text = str(g.get("events", "") or "").strip()
  if not text:
    if g.small_steps <= 0 or g.small_steps >= steps:
      raise ValueError(f"config.growth.small_steps={g.small_steps} must be in "
                       f"(0, config.train.steps={steps}).")
    offline.check_grow_run(cfg)
    return events
  if not events:
    raise ValueError(f"config.growth.events={text!r} holds no event — write {EVENTS_SYNTAX}")
  at = [e.step for e in events]
  layers = [int(g.small_model.num_layers)] + [e.num_layers for e in events]
  where = f"config.growth.events={text!r}"
  if any(b <= a for a, b in zip([0] + at, at)) or at[-1] >= steps:
    raise ValueError(f"{where}: the growth steps {', '.join(map(str, at))} must increase "
                     f"within (0, config.train.steps={steps}) — write each event at a "
                     f"later step, the last below {steps}")
  if any(b <= a for a, b in zip(layers, layers[1:])):
    raise ValueError(f"{where}: the layer counts {' -> '.join(map(str, layers))} (from "
                     f"config.growth.small_model.num_layers) must increase — make each event "
                     f"deeper than the model before it")
  if layers[-1] != int(cfg.model.num_layers):
    raise ValueError(f"{where}: the last event grows to {layers[-1]} layers, but "
                     f"config.model.num_layers={cfg.model.num_layers} — end the schedule at "
                     f"{cfg.model.num_layers} layers (the final model is config.model)")
  if g.small_steps and int(g.small_steps) != at[0]:
    raise ValueError(f"config.growth.small_steps={g.small_steps} disagrees with {where} "
                     f"(first growth at step {at[0]}) — set small_steps=0 (the events "
                     f"decide)")
  if len(events) > 1 and tuple(g.layer_map):
    raise ValueError(f"config.growth.layer_map={list(g.layer_map)} is one growth's map, "
                     f"but {where} has {len(events)} — drop layer_map (each event uses its "
                     f"method's map)")
  if len(events) > 1 and g.schedule != "continue":
    raise ValueError(f"config.growth.schedule={g.schedule!r} restarts the step count at "
                     f"each growth, which the steps of {where} cannot follow — use "
                     f"schedule='continue'")
  ramp = int(g.get("mask_ramp_steps", 0) or 0)
  short = [(a, b) for a, b in zip(at, at[1:]) if b - a < ramp]
  if short:
    a, b = short[0]
    raise ValueError(f"config.growth.mask_ramp_steps={ramp} is longer than the stage from "
                     f"step {a} to {b} of {where}, and a model cannot grow inside its mask "
                     f"ramp — ramp over at most {min(y - x for x, y in zip(at, at[1:]))} "
                     f"steps, or space the events further apart")
  for i, event in enumerate(events, 1):
    try:
      offline.check_grow_run(growth_config(cfg, events, i))
    except ValueError as e:
      raise ValueError(f"{event.where()} ({layers[i - 1]} -> {layers[i]} layers): "
                       f"{e}") from None
  return events


def run_dirs(workdir: str, num_events: int) -> tuple[list[str], list[str]]:
  """(each stage's run dir, each growth's grown dir): small/ grown/ large/ for one growth
  (as two-stage runs always had), stage_0/ grown_1/ stage_1/ ... for several."""
  root = epath.Path(workdir)
  if num_events == 1:
    return [str(root / "small"), str(root / "large")], [str(root / "grown")]
  return ([str(root / f"stage_{i}") for i in range(num_events + 1)],
          [str(root / f"grown_{i}") for i in range(1, num_events + 1)])


def stage_view(*dirs: str) -> tuple[int, ...]:
  """Latest complete step of each directory as this process sees them (-1: none): run
  dirs and grown dirs alternating, `stage_view(small, grown, large)` for one growth."""
  latest = ckpt_lib.latest_complete_step
  return tuple(-1 if s is None else s for s in (
      latest(str(epath.Path(d) / "checkpoints") if i % 2 == 0 else d)
      for i, d in enumerate(dirs)))


def stage_steps(cfg: ml_collections.ConfigDict, events: list[Event], i: int) -> tuple[int, int]:
  """(first, last) step of stage i: from the growth before it (0) to the next (the run's
  end)."""
  return (events[i - 1].step if i > 0 else 0,
          events[i].step if i < len(events) else int(cfg.train.steps))


def stage_cost(cfg: ml_collections.ConfigDict, events: list[Event], i: int
               ) -> tuple[int, float]:
  """(tokens, training FLOPs) of stage i, as the trainer counts them (6N + attention per
  token, `ModelConfig.flops_per_token`)."""
  c = stage_config(cfg, events, i)
  start, end = stage_steps(cfg, events, i)
  tokens = (end - start) * int(c.train.global_batch_size) * int(c.data.seq_len)
  return tokens, tokens * ModelConfig.from_config(c.model).flops_per_token(c.data.seq_len)


def scratch_flops(cfg: ml_collections.ConfigDict) -> float:
  """FLOPs of training the final model (`config.model`) from scratch for the run's steps."""
  tokens = int(cfg.train.steps) * int(cfg.train.global_batch_size) * int(cfg.data.seq_len)
  return tokens * ModelConfig.from_config(cfg.model).flops_per_token(cfg.data.seq_len)


def run_grow(cfg: ml_collections.ConfigDict, workdir: str, log=print,
             stop_after_steps: int | None = None) -> dict:
  """Runs the stages and growths still to do; returns each trained stage's history,
  keyed by its directory's name. A stage stopped early (preemption,
  `stop_after_steps`: steps per stage trained in this call) ends the call there.

  Which stages are done is process 0's view of the filesystem, agreed by all:
  processes that picked stages from their own views could diverge and deadlock.
  """
  events = check_schedule(cfg)  # every growth is refused here, not after a stage trained
  k = len(events)
  runs, grown = run_dirs(workdir, k)
  interleaved = [d for pair in zip(runs, grown) for d in pair] + [runs[-1]]
  view = distributed.agreed(stage_view(*interleaved))
  run_latest, grown_latest = view[0::2], view[1::2]
  parts, history = 2 * k + 1, {}
  for i in range(k + 1):
    name = epath.Path(runs[i]).name
    layers = int(stage_model(cfg, events, i).num_layers)
    if i > 0 and run_latest[i] < 0 and grown_latest[i - 1] < 0:
      event = events[i - 1]
      gcfg = growth_config(cfg, events, i)
      log(f"== stage {2 * i}/{parts}: grow {gcfg.growth.small_model.num_layers} -> "
          f"{layers} layers by {event.method} at step {event.step} -> {grown[i - 1]}")
      offline.grow_checkpoint(
          str(epath.Path(runs[i - 1]) / "checkpoints"), grown[i - 1],
          stage_config(cfg, events, i), step=event.step, seed=cfg.seed + i - 1, log=log,
          **offline.grow_run_kwargs(gcfg))
    end = events[i].step if i < k else int(cfg.train.steps)
    if i == k or run_latest[i] < end:
      log(f"== stage {2 * i + 1}/{parts}: {layers}-layer model to step {end} -> {runs[i]}")
      history[name] = train_lib.train(
          stage_config(cfg, events, i, grown[i - 1] if i > 0 else ""), runs[i],
          stop_after_steps=stop_after_steps,
          later_flops=sum(stage_cost(cfg, events, j)[1] for j in range(i + 1, k + 1)))
      if history[name]["stopped_at"] is not None:
        return history
    if i < k:
      faults.maybe_kill("handoff")
  return history


def run(cfg: ml_collections.ConfigDict, workdir: str,
        stop_after_steps: int | None = None, log=print) -> dict:
  """`growjax train`: a whole grow run when `config.growth.enabled`, else one stage.
  Says the workdir first and, once the run is done, how it ended (`train.summary`:
  the console block and WORKDIR/summary.json)."""
  distributed.check_shared_workdir(workdir)
  t0 = time.perf_counter()
  lead = jax.process_index() == 0
  if lead:
    log(f"workdir {ckpt_lib.absolute(workdir)}: checkpoints, metrics.jsonl, growjax.log"
        + (", TensorBoard files in tb/" if cfg.metrics.tensorboard and
           "tensorboard" in config_lib.loggers(cfg.train) else "")
        + (" (a grow run: one directory per stage)" if cfg.growth.enabled else ""))
  if not cfg.growth.enabled:
    history = train_lib.train(cfg, workdir, stop_after_steps=stop_after_steps)
    if lead and history["stopped_at"] is None:
      tokens = int(cfg.train.steps) * int(cfg.train.global_batch_size) * int(cfg.data.seq_len)
      _summarize(summary_lib.summarize(workdir, workdir, tokens=tokens,
                                       wall_s=time.perf_counter() - t0), log)
    return history
  history = run_grow(cfg, workdir, stop_after_steps=stop_after_steps, log=log)
  if lead and all(h["stopped_at"] is None for h in history.values()):
    events = schedule(cfg)
    runs, _ = run_dirs(workdir, len(events))
    stages = []
    for i, run_dir in enumerate(runs):
      a, b = stage_steps(cfg, events, i)
      stages.append(f"{epath.Path(run_dir).name}/ {stage_model(cfg, events, i).num_layers} "
                    f"layers, steps {a}..{b}")
    tokens = sum(stage_cost(cfg, events, i)[0] for i in range(len(events) + 1))
    _summarize(summary_lib.summarize(workdir, runs[-1], tokens=tokens,
                                     wall_s=time.perf_counter() - t0,
                                     scratch_flops=scratch_flops(cfg), stages=stages), log)
  return history


def _summarize(summary: dict, log) -> None:
  summary_lib.write(summary)
  log(summary_lib.format_summary(summary))
