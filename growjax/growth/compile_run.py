"""`growjax compile`: every program a run executes, compiled by the TPU compiler for the
run's slice before anything is launched.

A plain run executes its train and eval steps; a grow run (`config.growth.enabled`,
two stages or `growth.events`) each stage's train and eval steps and each growth's one
jitted function (`offline.grow_state`), the last stage's step included, so a grown
model that would not fit is found before the small model trains a step. Each is
compiled by libtpu for compile-only devices of the topology (`growjax.train.aot`), and
reported per chip: parameters, optimizer state, temporaries, total against HBM, compile
time, and the compiler's out-of-memory line where it refuses one (exit 1).

Not compiled: a `learn` growth (a training loop of its own), the masked steps of an MSG
mask ramp, and the piecewise path a streamed growth takes (the whole growth function is
compiled instead: the larger of the two).
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import ml_collections

from growjax.growth import offline, stages
from growjax.growth import spec as spec_lib
from growjax.train import aot

GIB = aot.GIB


class DoesNotFit(RuntimeError):
  """A program the compiler refused for lack of HBM: one line for the console."""

  def __init__(self, one_line: str):
    super().__init__(one_line)
    self.one_line = one_line


@dataclasses.dataclass
class Part:
  """One program of the run, not compiled yet: `compile()` compiles it."""
  name: str
  compile: object   # () -> aot.Program


def parts(cfg: ml_collections.ConfigDict, topo: aot.Topology) -> list[Part]:
  """The run's programs, in the order the run executes them."""
  hbm = topo.hbm_bytes
  if not cfg.growth.enabled:
    return _stage_parts(cfg, topo, "")
  events = stages.check_schedule(cfg)
  out = []
  for i in range(len(events) + 1):
    if i > 0:
      out.append(Part(f"growth {i}", lambda i=i: _growth(cfg, events, i, topo, hbm)))
    label = stage_label(len(events), i)
    out += _stage_parts(stages.stage_config(cfg, events, i), topo, label)
  return out


def stage_label(num_events: int, i: int) -> str:
  if num_events == 1:
    return ("small", "large")[i]
  return f"stage {i}"


def _stage_parts(cfg, topo, label) -> list[Part]:
  prefix = f"{label} " if label else ""
  setup = {}

  def built():
    if "s" not in setup:
      setup["s"] = aot.build(cfg, topo)
    return setup["s"]

  return [Part(prefix + "train step",
               lambda: aot.compile_train_step(built(), topo.hbm_bytes, prefix + "train step")),
          Part(prefix + "eval step",
               lambda: aot.compile_eval_step(built(), topo.hbm_bytes, prefix + "eval step"))]


def _growth(cfg, events, i, topo, hbm) -> aot.Program:
  """Growth i as `stages.run_grow` runs it: the source stage's state (from its config, as
  the checkpoint's metadata would give it) grown into stage i's layout on its mesh."""
  gcfg = stages.growth_config(cfg, events, i)
  kw = offline.grow_run_kwargs(gcfg)
  large = aot.build(stages.stage_config(cfg, events, i), topo)
  src_cfg = stages.stage_config(cfg, events, i - 1)
  meta = {"model": src_cfg.model.to_dict(), "config": src_cfg.to_dict()}
  src_model, src_tx, src_abstract = offline.source_setup(meta, large)
  spec = spec_lib.resolve(src_model, large.model_cfg, kw["method"], kw["width_method"],
                          kw["layer_map"], allow_inexact=kw["allow_inexact"],
                          width_noise=kw["width_noise"], names=kw["names"])
  what = (f"{src_model.num_layers}L x {src_model.embed_dim} -> {large.model_cfg.num_layers}L "
          f"x {large.model_cfg.embed_dim} by {spec.method}"
          + (f" + width {spec.width_method}" if spec.width_method else "")
          + (f" + experts {src_model.num_experts or 'dense'} -> "
             f"{large.model_cfg.num_experts}"
             if large.model_cfg.num_experts != src_model.num_experts else "")
          + f", opt_state {kw['opt_state']}")
  if spec.learns:
    return aot.Program(f"growth {i}", what + " (learn: not compiled, a training loop of "
                       "its own)", hbm=hbm)

  rng = jax.eval_shape(lambda: jax.random.key(0))   # nothing is made on compile-only chips

  def lower():
    with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
      return offline.grow_state(src_abstract, src_model, src_tx, large, spec=spec,
                                opt_state=kw["opt_state"], schedule=kw["schedule"],
                                rng=rng, lower=True)

  prog = aot.compile_lowered(f"growth {i}", what, lower, hbm, large.abstract_state)
  # jit drops arguments it does not read (the small moments under opt_state reset), but
  # the growth holds the whole restored small state meanwhile.
  held = aot.per_chip_bytes(src_abstract)
  if prog.fits and held > prog.arguments:
    prog.total += held - prog.arguments
    prog.arguments = held
  return prog


# ----------------------------------------------------------------------------- report


def compile_run(cfg: ml_collections.ConfigDict, topo: aot.Topology, *, estimate=False,
                bound=False, log=lambda _: None) -> dict:
  """Compiles every program of the run; the report as a dict (what `--json` prints)."""
  programs = []
  for part in parts(cfg, topo):
    prog = part.compile()
    log(row(prog))
    programs.append(prog)
  report = {"topology": topo.name, "topology_name": topo.topology_name,
            "chips": topo.num_chips, "slices": topo.slices,
            "hbm_per_chip": topo.hbm_bytes, "device_kind": aot.devices(topo)[0].device_kind,
            "programs": [p.as_dict() for p in programs],
            "fits": all(p.fits for p in programs)}
  stage_cfgs = _train_stage_configs(cfg)
  if bound:
    report["bound"] = {label: aot.bound(c, topo) for label, c in stage_cfgs}
  if estimate:
    report["estimate"] = {}
    last = len(stage_cfgs) - 1
    for i, (label, c) in enumerate(stage_cfgs):
      log(f"--estimate {label or 'train step'}:")
      got = aot.estimate(c, topo, log=lambda m: log("  " + m))
      if got["fits"] and i < last:   # a stage before the last: its fields in config.growth
        got["overrides"] = [
            f"--config.growth.small_model.remat_policy={got['remat_policy']}",
            f"--config.growth.small_global_batch_size={got['global_batch_size']}"]
      report["estimate"][label or "train"] = got
  return report


def _train_stage_configs(cfg) -> list[tuple[str, ml_collections.ConfigDict]]:
  if not cfg.growth.enabled:
    return [("", cfg)]
  events = stages.check_schedule(cfg)
  return [(stage_label(len(events), i), stages.stage_config(cfg, events, i))
          for i in range(len(events) + 1)]


HEADER = (f"{'program':<22} {'params':>8} {'opt':>8} {'temp':>8} {'total':>8} "
          f"{'HBM':>6} {'compile':>8}  what")


def row(p: aot.Program) -> str:
  gib = lambda b: f"{b / GIB:8.2f}"
  if not p.fits:
    return f"{p.name:<22} {'does not fit: ' + p.oom}"
  if not p.total:
    return f"{p.name:<22} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {'':>6} {'':>8}  {p.what}"
  return (f"{p.name:<22} {gib(p.params)} {gib(p.opt_state)} {gib(p.temporaries)} "
          f"{gib(p.total)} {p.hbm / GIB:6.2f} {p.compile_s:7.1f}s  {p.what}"
          + (f"; {p.mosaic_calls} Mosaic kernel calls" if p.mosaic_calls else ""))


def title(topo: aot.Topology) -> str:
  slices = f" x {topo.slices} slices" if topo.slices > 1 else ""
  return (f"{topo.name}{slices}: {topo.num_chips} chips ({aot.devices(topo)[0].device_kind}, "
          f"{topo.topology_name}), {topo.hbm_bytes / GIB:.2f} GiB HBM per chip; per chip, "
          f"GiB, compiled by libtpu on this host:")


def format_report(report: dict, topo: aot.Topology) -> str:
  lines = [title(topo), HEADER]
  lines += [row(aot.Program(**{k: v for k, v in p.items() if k != "fits"}))
            for p in report["programs"]]
  return "\n".join(lines + tail(report))


def tail(report: dict) -> list[str]:
  """The lines after the table: the compiler's bound, --estimate's result."""
  lines = []
  for label, b in (report.get("bound") or {}).items():
    name = f"{label} train step" if label else "train step"
    if b["valid"]:
      lines.append(f"compiler's bound ({b['kind']}), {name}, not a measurement: "
                   f"{b['step_s'] * 1e3:.1f} ms "
                   f"per step, {b['tokens_per_s_per_chip']:,.0f} tokens/s per chip, MFU "
                   f"{b['mfu']:.1%} ({b['mfu_causal']:.1%} causal) at "
                   f"{b['peak_tflops']:g} TFLOP/s per chip")
    else:
      lines.append(f"compiler's bound, {name}: none — {b['why']}")
  for label, e in (report.get("estimate") or {}).items():
    name = "" if label == "train" else f" ({label} stage)"
    if e["fits"]:
      lines.append(f"--estimate{name}: {e['per_chip']} sequences per chip with remat "
                   f"{e['remat_policy']} ({e['total'] / GIB:.2f} GiB, {e['compiles']} "
                   f"compiles): {' '.join(e['overrides'])}")
    else:
      lines.append(f"--estimate{name}: not even 1 sequence per chip fits with any remat "
                   f"policy ({e['compiles']} compiles) — use a larger slice or more "
                   f"tensor parallelism (config.mesh.tensor)")
  return lines


def first_failure(report: dict) -> str | None:
  bad = next((p for p in report["programs"] if not p["fits"]), None)
  if bad is None:
    return None
  return (f"{bad['name']} does not fit {report['topology']}: {bad['oom']} — lower "
          f"config.train.global_batch_size, raise config.model.remat_policy (full "
          f"recomputes most), or use a larger slice; --estimate finds what fits")


def run(cfg: ml_collections.ConfigDict, topology: str, slices: int = 1, as_json=False,
        estimate=False, bound=False) -> dict:
  """`growjax compile`: prints the report (each program's row as it compiles); raises
  DoesNotFit (exit 1) when a program does not fit."""
  topo = aot.parse_topology(topology, slices)
  aot.check_libtpu()
  say = (lambda _: None) if as_json else (lambda m: print(m, flush=True))
  say(title(topo))
  say(HEADER)
  report = compile_run(cfg, topo, estimate=estimate, bound=bound, log=say)
  if as_json:
    print(json.dumps(report, indent=1), flush=True)
  for line in tail(report):
    say(line)
  failure = first_failure(report)
  if failure:
    raise DoesNotFit(failure)
  return report
