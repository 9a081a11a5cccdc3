"""Offline growth of a saved checkpoint: restore small -> grow -> save large.

Every check (`spec.resolve`: the configs, methods, layer map, growth factor,
exactness; the optimizer-state mode and schedule) runs before the checkpoint
is read. The source is then restored straight into the target mesh's sharding
(a checkpoint bigger than one device grows on a mesh), the growth operator runs
under `jax.jit` with the large model's `out_shardings`, and the result is
written in the same format `growjax train` resumes from
(`config.train.init_from`). The step is carried over so the learning-rate
schedule continues (the paper), or reset to 0 on request. A growth that does
not keep the function exactly although its operator promises to (`spec`'s
`inexact`) is measured on a probe batch and the change printed.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import checkpoint as ckpt_lib
from growjax import checkpoint_pieces as ckpt_pieces
from growjax import distributed
from growjax import faults
from growjax import lease
from growjax.train import optimizer as opt_lib
from growjax.train import state as state_lib
from growjax.train import mask_ramp
from growjax.growth import masks, operators, optimizer_state, placement, stream
from growjax.growth import spec as spec_lib
from growjax.model import ModelConfig, Transformer, logical_axes

LEARN_STEPS = 100  # Adam steps of the `learn` operators' expansion (LiGO-style)
SCHEDULES = ("continue", "restart")
PROBE_ROWS, PROBE_LEN = 4, 64  # random tokens measuring an inexact growth's logit change


def source_setup(meta: dict, large: state_lib.Setup):
  """The small model's config, optimizer and state layout, placed on the large mesh:
  what the growth reads, built from the checkpoint's metadata alone (no restore), so the
  memory tests and benchmarks trace the same growth `grow_checkpoint` runs."""
  src_model = ModelConfig(**meta["model"])
  src_cfg = ml_collections.ConfigDict(meta["config"])
  schedule = opt_lib.make_schedule(src_cfg.optimizer, src_cfg.train.steps)
  tx = opt_lib.make_optimizer(src_cfg.optimizer, schedule, logical_axes(src_model),
                              src_model)
  shardings, abstract = state_lib.state_layout(src_model, tx, large.mesh, large.rules)
  return src_model, tx, abstract


def data_position_in_windows(data_state: dict | None, meta: dict) -> dict | None:
  """The loader position as windows consumed, so the large stage goes on with the next
  unseen window whatever its batch size (older checkpoints count batches of the
  source run's `global_batch_size`)."""
  if data_state and "next_index" in data_state and "windows_consumed" not in data_state:
    return {"windows_consumed": int(data_state["next_index"]) * int(meta["global_batch_size"])}
  return data_state


def grow_function(spec: spec_lib.GrowthSpec, src_tx, large: state_lib.Setup, *,
                  opt_state: str, schedule: str):
  """The whole growth as one function `(small state, rng, learned params or None) -> large
  state`: what `grow_state` jits, and what the streamed path cuts into pieces. Public so
  the memory tests and benchmarks lower exactly the program `growjax grow` runs."""
  on_mesh = dict(mesh=large.mesh, rules=large.rules)

  def grown(state, rng, learned):
    with placement.entered(placement.Placement(large.mesh, large.rules)):
      params = learned if learned is not None else operators.grow_by(
          spec, state.params, rng=rng, **on_mesh)
      step = state.step if schedule == "continue" else jnp.zeros((), jnp.int32)
      if opt_state == "grow":
        new_opt = optimizer_state.grow_moments(spec, state.opt_state, src_tx, rng)
      else:
        new_opt = large.tx.init(params)
      new_opt = opt_lib.set_schedule_step(new_opt, step)
    return state_lib.TrainState(step=step, params=params, opt_state=new_opt)

  return grown


def grow_state(src_state, src_model: ModelConfig, src_tx, large: state_lib.Setup, *,
               opt_state: str, schedule: str, rng: jax.Array, method: str = "stack",
               width_method: str | None = None, layer_map: Sequence[int] | None = None,
               spec: spec_lib.GrowthSpec | None = None, learn_batches=None,
               lower: bool = False):
  """Grows a restored train state into the large setup's layout (pure, sharded).

  The growth is `spec` (from `spec.resolve`), or else resolved here from `method`,
  `width_method` and `layer_map`. One function, jitted onto the large mesh, makes
  the whole large state (params, optimizer state grown or fresh, step) in
  `large.state_shardings`; growth runs under the large mesh and rules, so every
  intermediate leaf is sharded too and per-device memory falls as devices are
  added. `learn` first trains its maps in sharded steps on the same mesh.
  `lower=True` returns the jitted function lowered on `src_state` (its leaves may
  be ShapeDtypeStructs carrying shardings) instead of running it:
  `benchmarks/memory_plan.py` compiles it.
  """
  spec = spec or spec_lib.resolve(src_model, large.model_cfg, method, width_method, layer_map)
  spec.check_opt_state(opt_state)
  on_mesh = dict(mesh=large.mesh, rules=large.rules)
  learned = None
  if spec.learns:
    if lower:
      raise ValueError("grow_state(lower=True) cannot lower 'learn': it runs a training "
                       "loop of jitted steps — lower another operator")
    learned = operators.grow_by(spec, src_state.params, rng=rng, learn_batches=learn_batches,
                                learn_steps=LEARN_STEPS, **on_mesh)

  grown = grow_function(spec, src_tx, large, opt_state=opt_state, schedule=schedule)
  jitted = jax.jit(grown, out_shardings=large.state_shardings)
  return jitted.lower(src_state, rng, learned) if lower else jitted(src_state, rng, learned)


def logit_change(spec: spec_lib.GrowthSpec, src_params: Any, grown_params: Any,
                 large: state_lib.Setup, rng: jax.Array) -> float:
  """max |grown - small| / max |small| over the logits of a probe batch of random
  tokens, in float32, for the change the width operator makes: the grown params
  themselves when depth keeps the function (no depth growth, `zero` or `llama_pro`:
  `spec.zero_writers`), else the width growth alone (other depth operators change
  the function by design)."""
  if spec.layer_map is not None and not spec.zero_writers:
    width_only = dataclasses.replace(spec, dst=spec.mid, layer_map=None)
    with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
      grown_params = operators.grow_by(width_only, src_params, rng=rng, mesh=large.mesh,
                                       rules=large.rules)
    spec = width_only
  seq = min(PROBE_LEN, int(large.cfg.data.seq_len))
  tokens = np.random.default_rng(0).integers(0, spec.src.vocab_size, (PROBE_ROWS, seq))
  replicated = NamedSharding(large.mesh, P())
  tokens = jax.make_array_from_callback(tokens.shape, replicated,
                                        lambda i: tokens[i].astype(np.int32))

  def logits(cfg, params, t):  # no logical-axis rules in context: no activation constraints
    cfg = cfg.for_exact_logits()
    return Transformer(cfg).apply({"params": params}, t)

  def change(small, grown, t):
    a, b = logits(spec.src, small, t), logits(spec.dst, grown, t)
    return jnp.max(jnp.abs(b - a)) / jnp.max(jnp.abs(a))

  return float(jax.jit(change, out_shardings=replicated)(src_params, grown_params, tokens))


def _check_run_args(spec: spec_lib.GrowthSpec, opt_state: str, schedule: str,
                    names: spec_lib.Names) -> None:
  spec.check_opt_state(opt_state, names)
  if schedule not in SCHEDULES:
    raise ValueError(f"{names.arg('schedule', schedule)} is not a schedule — choose continue "
                     f"(the small model's step, the paper) or restart (step 0)")


def grow_run_kwargs(cfg: ml_collections.ConfigDict) -> dict:
  """`grow_checkpoint`'s growth arguments from a grow run's `config.growth`."""
  g = cfg.growth
  return dict(method=g.method, width_method=g.width_method or None,
              layer_map=tuple(int(i) for i in g.layer_map), opt_state=g.opt_state,
              schedule=g.schedule, allow_inexact=bool(g.allow_inexact),
              width_noise=g.get("width_noise", None),
              drop_fraction=float(g.get("drop_fraction", 0.0)), names=spec_lib.GROW_RUN)


def check_grow_run(cfg: ml_collections.ConfigDict) -> spec_lib.GrowthSpec:
  """What a grow run's growth stage will check, done before its small stage trains:
  `config.growth` against `config.growth.small_model` and `config.model`."""
  kw = grow_run_kwargs(cfg)
  spec = spec_lib.resolve(ModelConfig.from_config(cfg.growth.small_model),
                          ModelConfig.from_config(cfg.model), kw["method"],
                          kw["width_method"], kw["layer_map"],
                          allow_inexact=kw["allow_inexact"], width_noise=kw["width_noise"],
                          drop_fraction=kw["drop_fraction"], names=kw["names"])
  _check_run_args(spec, kw["opt_state"], kw["schedule"], kw["names"])
  masks.check(spec, cfg.growth.get("mask_ramp_steps", 0))
  return spec


def _learn_batches(spec: spec_lib.GrowthSpec, large_cfg: ml_collections.ConfigDict):
  if not spec.learns:
    return None
  from growjax import data as data_lib
  it = data_lib.train_iterator(large_cfg.data, seed=large_cfg.seed,
                               global_batch_size=large_cfg.train.global_batch_size)
  return (jnp.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in it)


def _restore(directory: str, step: int, abstract, meta: dict):
  reader = ckpt_lib.Checkpoints(directory, use_async=False)
  src_state, data_state, _ = reader.restore(step, abstract)
  jax.block_until_ready(src_state)
  reader.close()
  return src_state, data_position_in_windows(data_state, meta)


def _save(out_dir: str, state, data_state, meta_out: dict) -> None:
  # Keeps every step (keep=None): the writer never deletes (a keep-N manager would
  # remove whatever else the directory holds).
  writer = ckpt_lib.Checkpoints(out_dir, use_async=False, keep=None)
  writer.save(int(state_lib.to_host(state.step)), state, data_state, meta_out, force=True)
  faults.maybe_kill("mid_grow")
  writer.wait()
  writer.close()


MARKER = "growjax_grow.json"   # what a grow writes into --to: its source and growth


def _destination(out_dir: str, marker: dict, field: str) -> bool:
  """Checks `out_dir` before any compute. Returns True when this same grow already
  finished there (nothing to do). An unfinished attempt of this same grow (its marker,
  no complete step) is cleared and redone; anything else in a non-empty directory is
  refused, and nothing in it is touched."""
  out = epath.Path(ckpt_lib.absolute(out_dir))
  entries = sorted(p.name for p in out.iterdir()
                   if not lease.is_lease_file(p.name)) if out.is_dir() else []
  if out.exists() and not out.is_dir():
    raise ValueError(f"{field}={out} is a file — choose an empty or new directory")
  if not entries:
    return False
  mine = None
  if MARKER in entries:
    try:
      mine = json.loads((out / MARKER).read_text())
    except (ValueError, OSError):
      mine = None
  if mine == marker:
    if ckpt_lib.latest_complete_step(str(out)) is not None:
      return True
    if jax.process_index() == 0:
      for name in entries:   # this grow's own unfinished attempt (orbax tmp / step dirs)
        if name != MARKER:
          p = out / name
          p.rmtree() if p.is_dir() else p.unlink()
    return False
  if mine is not None:
    what = (f"another grow (from {mine.get('source')} by {mine.get('method')}, "
            f"step {mine.get('step')})")
  else:
    steps = [n for n in entries if ckpt_lib.STEP_DIR.match(n)]
    what = (f"another run's checkpoints (steps {', '.join(sorted(steps, key=int))})" if steps
            else f"{len(entries)} other entries ({', '.join(entries[:3])}"
                 f"{', ...' if len(entries) > 3 else ''})")
  raise ValueError(f"{field}={out} holds {what} — choose an empty or new directory; "
                   f"nothing was written")


def _meta_out(meta: dict, large: state_lib.Setup, spec: spec_lib.GrowthSpec, source: str,
              **grown_from) -> dict:
  out = state_lib.run_meta(large)
  out["flops_seen"] = float(meta.get("flops_seen", 0.0))  # the small stage's compute
  # `learn` trains its expansion through the large model: count that compute too, so
  # loss-vs-FLOPs comparisons stay fair (each learn phase ~ LEARN_STEPS large steps).
  out["flops_seen"] += spec.learn_phases * LEARN_STEPS * large.tokens_per_step * \
      large.model_cfg.flops_per_token(large.cfg.data.seq_len)
  out["grown_from"] = {"checkpoint": source, "model": meta["model"], "method": spec.method,
                       "width_method": spec.width_method,
                       **({"width_noise": spec.width_noise}
                          if spec.width_method == "split" else {}),
                       "layer_map": list(spec.layer_map) if spec.layer_map else None,
                       **({"experts": spec.experts, "drop_fraction": spec.drop_fraction}
                          if spec.experts else {}),
                       **grown_from}
  # Which layers / units are new, for a large run with config.growth.mask_ramp_steps.
  out["grown_from"][mask_ramp.GROWN_KEY] = masks.record(spec)
  if masks.why_not(spec):
    out["grown_from"]["masks_unavailable"] = masks.why_not(spec)
  if meta.get("tokenizer"):   # the source's tokenizer (its files stay with the source)
    out["tokenizer"] = meta["tokenizer"]
  return out


# Below this the whole grown state is held at once: streaming saves no memory that
# matters and its per-piece saves cost time (seconds per growth of a tiny model).
STREAM_MIN_BYTES = 1 << 30


def _why_not_streamed(spec: spec_lib.GrowthSpec, out_dir: str = "") -> str | None:
  """Why this growth must hold the whole state (None: it streams)."""
  if spec.learns:
    return "'learn' trains its maps through the whole model"
  if spec.inexact:
    return "an inexact growth's logit change is measured on both whole models"
  if jax.process_count() > 1:
    return "the piece writer is single-process"
  if ckpt_lib.is_url(out_dir):
    return ("the piece writer renames directories, tested on local disks only (not yet "
            "on gs://)")
  return None


def _grow_whole(directory, step, src_abstract, meta, src_tx, large, spec, large_cfg,
                out_dir, t0, *, opt_state, schedule, seed, allow_inexact):
  """Restore the whole small state, grow it in one jit, save the whole large state."""
  src_state, data_state = _restore(directory, step, src_abstract, meta)
  t_read = time.perf_counter()
  with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
    state = grow_state(src_state, None, src_tx, large, spec=spec, opt_state=opt_state,
                       schedule=schedule, rng=jax.random.key(seed),
                       learn_batches=_learn_batches(spec, large_cfg))
    jax.block_until_ready(state)
  t_grow = time.perf_counter()
  change = None
  if spec.inexact:
    change = logit_change(spec, src_state.params, state.params, large, jax.random.key(seed))
  _save(out_dir, state, data_state, _meta_out(
      meta, large, spec, f"{directory}/{step}", opt_state=opt_state, schedule=schedule,
      allow_inexact=allow_inexact, logit_change=change))
  times = {"read_s": t_read - t0, "grow_s": t_grow - t_read,
           "write_s": time.perf_counter() - t_grow}
  return int(state_lib.to_host(state.step)), times, change


def _grow_streamed(directory, step, src_abstract, meta, src_tx, large, spec, out_dir, t0,
                   *, opt_state, schedule, seed, allow_inexact):
  """Restore, grow and write piece by piece (`growjax.growth.stream`)."""
  reader = ckpt_lib.Checkpoints(directory, use_async=False)
  data_state = data_position_in_windows(reader.data(step), meta)
  reader.close()
  times = {"read_s": time.perf_counter() - t0, "grow_s": 0.0, "write_s": 0.0}

  def read(paths):   # runs inside the pieces: its time is moved from grow_s to read_s
    t = time.perf_counter()
    leaves = ckpt_pieces.restore_leaves(directory, step, src_abstract, paths)
    times["read_s"] += time.perf_counter() - t
    times["grow_s"] -= time.perf_counter() - t
    return leaves

  rng = jax.random.key(seed)
  writer = ckpt_pieces.PieceWriter(out_dir)
  out_step = None
  with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
    grown = grow_function(spec, src_tx, large, opt_state=opt_state, schedule=schedule)
    plan = stream.plan(grown, src_abstract, rng, large.abstract_state, large.state_shardings)
    pieces = stream.run(plan, read, rng)
    while True:
      t = time.perf_counter()
      pairs = next(pieces, None)
      if pairs is None:
        break
      times["grow_s"] += time.perf_counter() - t
      t = time.perf_counter()
      for path, x in pairs:
        if path == (jax.tree_util.GetAttrKey("step"),):
          out_step = int(state_lib.to_host(x))
      writer.write(pairs)
      del pairs
      times["write_s"] += time.perf_counter() - t
      faults.maybe_kill("mid_grow")
  t = time.perf_counter()
  writer.finish(out_step, data_state, _meta_out(
      meta, large, spec, f"{directory}/{step}", opt_state=opt_state, schedule=schedule,
      allow_inexact=allow_inexact, logit_change=None))
  times["write_s"] += time.perf_counter() - t
  return out_step, times, len(plan.pieces)


def grow_checkpoint(source: str, out_dir: str, large_cfg: ml_collections.ConfigDict, *,
                    method: str = "stack", width_method: str | None = None,
                    step: int | None = None, g: int | None = None,
                    layer_map: Sequence[int] | None = None, opt_state: str = "reset",
                    schedule: str = "continue", allow_inexact: bool = False, seed: int = 0,
                    width_noise: float | None = None, drop_fraction: float = 0.0,
                    names: spec_lib.Names = spec_lib.CLI, stream: bool | None = None,
                    log=print) -> dict:
  """`growjax grow` (and a grow run's stage 2): returns timings and memory figures
  (also printed). `names` spells the inputs in errors: `growjax grow`'s flags by
  default, `spec.GROW_RUN` for a grow run's config fields. `stream` (default: whenever
  it can and the grown state is at least `STREAM_MIN_BYTES`; True: whenever it can, see
  `growjax.growth.stream`) grows and writes piece by piece, holding about
  the largest array at a time instead of the whole grown state; False: the whole
  state at once."""
  t0 = time.perf_counter()
  directory, step = ckpt_lib.resolve(source, step, field="--from")
  meta = ckpt_lib.read_meta(directory, step)
  ramp = mask_ramp.restored(meta)
  if ramp and ramp.active(step):
    raise ValueError(f"{names.arg('from', directory)} step {step} is inside its MSG mask "
                     f"ramp (steps {ramp.start}..{ramp.end}): its masks are not all 1 yet "
                     f"— grow a step >= {ramp.end}, or train with a shorter "
                     f"config.growth.mask_ramp_steps")
  large = state_lib.build(large_cfg)
  src_model, src_tx, src_abstract = source_setup(meta, large)
  spec = spec_lib.resolve(src_model, large.model_cfg, method, width_method, layer_map, g=g,
                          allow_inexact=allow_inexact, width_noise=width_noise,
                          drop_fraction=drop_fraction, names=names)
  _check_run_args(spec, opt_state, schedule, names)

  marker = {"source": f"{directory}/{step}", "method": method, "width_method": width_method,
            "g": g, "layer_map": list(layer_map) if layer_map else None,
            "opt_state": opt_state, "schedule": schedule, "seed": seed,
            "allow_inexact": bool(allow_inexact),
            **({"width_noise": spec.width_noise} if spec.width_method == "split" else {}),
            **({"drop_fraction": spec.drop_fraction} if spec.drop_fraction else {}),
            "model": {k: large_cfg.model[k] for k in sorted(large_cfg.model.keys())}}
  marker = json.loads(json.dumps(marker, default=str))
  field = "--to" if names.style == "flag" else "the grow run's grown dir"
  [done] = distributed.agreed([int(_destination(out_dir, marker, field))])
  if done:
    if jax.process_index() == 0:
      log(f"already grown, nothing to do: {ckpt_lib.absolute(out_dir)} holds the grow of "
          f"{directory}/{step} by {method}")
    return {"source": f"{directory}/{step}", "out": out_dir, "nothing_to_do": True}
  if jax.process_index() == 0:
    epath.Path(ckpt_lib.absolute(out_dir)).mkdir(parents=True, exist_ok=True)
    (epath.Path(ckpt_lib.absolute(out_dir)) / MARKER).write_text(json.dumps(marker, indent=1))
  distributed.agreed([0])
  fallback = _why_not_streamed(spec, out_dir)
  if stream is None and not fallback:
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(large.abstract_state))
    if size < STREAM_MIN_BYTES:
      fallback = (f"the grown state is {size / 2**20:.0f} MiB, under "
                  f"{STREAM_MIN_BYTES >> 20} MiB: one piece costs less than many")
  if stream is False or (stream is None and fallback):
    out_step, times, change = _grow_whole(
        directory, step, src_abstract, meta, src_tx, large, spec, large_cfg, out_dir, t0,
        opt_state=opt_state, schedule=schedule, seed=seed, allow_inexact=allow_inexact)
    n_pieces = None
  else:
    if fallback:
      raise ValueError(f"grow_checkpoint(stream=True): {fallback} — pass stream=None")
    out_step, times, n_pieces = _grow_streamed(
        directory, step, src_abstract, meta, src_tx, large, spec, out_dir, t0,
        opt_state=opt_state, schedule=schedule, seed=seed, allow_inexact=allow_inexact)
    change = None
  t_end = time.perf_counter()

  stats = jax.local_devices()[0].memory_stats() or {}
  report = {
      "source": f"{directory}/{step}", "out": out_dir, "step": out_step,
      "src_params": src_model.num_params(), "dst_params": large.model_cfg.num_params(),
      **times, "total_s": t_end - t0, "streamed": n_pieces is not None, "pieces": n_pieces,
      "not_streamed_because": None if n_pieces is not None else (fallback or "stream=False"),
      "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "peak_device_bytes": stats.get("peak_bytes_in_use"), "logit_change": change,
  }
  if jax.process_index() == 0:
    _log_report(report, spec, names, log)
  return report


def _log_report(report: dict, spec: spec_lib.GrowthSpec, names: spec_lib.Names, log) -> None:
  src, dst, peak = spec.src, spec.dst, report["peak_device_bytes"]
  log(f"grew {report['source']} ({report['src_params'] / 1e6:.1f}M params, "
      f"{src.num_layers}L x {src.embed_dim}) -> {report['out']} "
      f"({report['dst_params'] / 1e6:.1f}M, {dst.num_layers}L x {dst.embed_dim}) by "
      f"{spec.method}{' + width ' + spec.width_method if spec.width_method else ''}"
      f"{' + experts ' + spec.experts if spec.experts else ''} at step "
      f"{report['step']}: read {report['read_s']:.2f}s, grow {report['grow_s']:.2f}s, "
      f"write {report['write_s']:.2f}s; peak host {report['peak_host_bytes'] / 2**30:.2f} GiB"
      + (f", peak device {peak / 2**30:.2f} GiB" if peak else "")
      + (f"; streamed in {report['pieces']} pieces" if report["streamed"] else
         f"; whole state at once ({report['not_streamed_because']})"))
  if report["logit_change"] is not None:
    what, fix = spec.inexact_message(names)
    log(f"inexact growth: {what}; the logits moved by up to "
        f"{report['logit_change']:.2%} (max relative change, {PROBE_ROWS} probe sequences "
        f"of random tokens) — {fix} to grow exactly")
