"""Offline growth of a saved checkpoint: restore small -> grow -> save large.

The source is restored straight into the target mesh's sharding (a checkpoint
bigger than one device grows on a mesh), the growth operator runs under
`jax.jit` with the large model's `out_shardings`, and the result is written in
the same format `growjax train` resumes from (`config.train.init_from`). The
step is carried over so the learning-rate schedule continues (the paper), or
reset to 0 on request.
"""

from __future__ import annotations

import resource
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from growjax import checkpoint as ckpt_lib
from growjax import growth  # the operators (growjax/growth/__init__.py)
from growjax import optimizer as opt_lib
from growjax import state as state_lib
from growjax.model import ModelConfig, logical_axes

LEARN_STEPS = 100  # Adam steps of the `learn` operators' expansion (LiGO-style)


def _source_setup(meta: dict, large: state_lib.Setup):
  """The small model's config, optimizer and state layout, placed on the large mesh."""
  src_model = ModelConfig(**meta["model"])
  src_cfg = ml_collections.ConfigDict(meta["config"])
  schedule = opt_lib.make_schedule(src_cfg.optimizer, src_cfg.train.steps)
  tx = opt_lib.make_optimizer(src_cfg.optimizer, schedule, logical_axes(src_model))
  shardings, abstract = state_lib.state_layout(src_model, tx, large.mesh, large.rules)
  return src_model, tx, abstract


def check_pair(src: ModelConfig, dst: ModelConfig, method: str, g: int | None,
               layer_map: Sequence[int] | None) -> None:
  """Refuses pairs no operator can bridge, naming the field to change."""
  for f in ("vocab_size", "head_dim"):
    if getattr(src, f) != getattr(dst, f):
      raise ValueError(f"source model {f}={getattr(src, f)} differs from config.model.{f}="
                       f"{getattr(dst, f)}; growth keeps {f} fixed.")
  if g is not None and dst.num_layers != g * src.num_layers and layer_map is None:
    raise ValueError(f"--g={g} but config.model.num_layers={dst.num_layers} is not "
                     f"{g} x the source's {src.num_layers} layers.")
  if layer_map is not None:
    bad = [i for i in layer_map if not 0 <= i < src.num_layers]
    if bad:
      raise ValueError(f"--layer_map entries {bad} point past the source model's "
                       f"{src.num_layers} layers (valid: 0..{src.num_layers - 1}).")
    if len(layer_map) != dst.num_layers:
      raise ValueError(f"--layer_map has {len(layer_map)} entries; config.model.num_layers="
                       f"{dst.num_layers} needs one per large layer.")


def data_position_in_windows(data_state: dict | None, meta: dict) -> dict | None:
  """The loader position as windows consumed, so the large stage goes on with the next
  unseen window whatever its batch size (older checkpoints count batches of the
  source run's `global_batch_size`)."""
  if data_state and "next_index" in data_state and "windows_consumed" not in data_state:
    return {"windows_consumed": int(data_state["next_index"]) * int(meta["global_batch_size"])}
  return data_state


def grow_state(src_state, src_model: ModelConfig, src_tx, large: state_lib.Setup, *,
               method: str, width_method: str | None, layer_map, opt_state: str,
               schedule: str, rng: jax.Array, learn_batches=None, lower: bool = False):
  """Grows a restored train state into the large setup's layout (pure, sharded).

  One function, jitted onto the large mesh, makes the whole large state (params,
  optimizer state grown or fresh, step) in `large.state_shardings`; growth runs
  under the large mesh and rules, so every intermediate leaf is sharded too and
  per-device memory falls as devices are added. `learn` first trains its maps
  in sharded steps on the same mesh. `lower=True` returns the jitted function
  lowered on `src_state` (its leaves may be ShapeDtypeStructs carrying
  shardings) instead of running it: `benchmarks/memory_plan.py` compiles it.
  """
  dst = large.model_cfg
  grow_kw = dict(src=src_model, dst=dst, method=method, width_method=width_method,
                 layer_map=layer_map, mesh=large.mesh, rules=large.rules)
  learned = None
  if method == "learn" or width_method == "learn":
    if lower:
      raise ValueError("grow_state(lower=True) cannot lower 'learn': it runs a training "
                       "loop of jitted steps.")
    learned = growth.grow(src_state.params, rng=rng, learn_batches=learn_batches,
                          learn_steps=LEARN_STEPS, **grow_kw)

  def grown(state, rng, learned):
    with growth.placement.entered(growth.placement.Placement(large.mesh, large.rules)):
      params = learned if learned is not None else growth.grow(state.params, rng=rng,
                                                               **grow_kw)
      step = state.step if schedule == "continue" else jnp.zeros((), jnp.int32)
      if opt_state == "grow":
        new_opt = growth.grow_opt_state(state.opt_state, src_tx, src_model, dst, method=method,
                                        width_method=width_method, layer_map=layer_map,
                                        mode="grow")
      else:
        new_opt = large.tx.init(params)
      new_opt = opt_lib.set_schedule_step(new_opt, step)
    return state_lib.TrainState(step=step, params=params, opt_state=new_opt)

  jitted = jax.jit(grown, out_shardings=large.state_shardings)
  return jitted.lower(src_state, rng, learned) if lower else jitted(src_state, rng, learned)


def grow_checkpoint(source: str, out_dir: str, large_cfg: ml_collections.ConfigDict, *,
                    method: str = "stack", width_method: str | None = None,
                    step: int | None = None, g: int | None = None,
                    layer_map: Sequence[int] | None = None, opt_state: str = "reset",
                    schedule: str = "continue", seed: int = 0, log=print) -> dict:
  """`growjax grow`: returns timings and memory figures (also printed)."""
  t0 = time.perf_counter()
  directory, step = ckpt_lib.resolve(source, step, field="--from")
  meta = ckpt_lib.read_meta(directory, step)
  large = state_lib.build(large_cfg)
  src_model, src_tx, src_abstract = _source_setup(meta, large)
  check_pair(src_model, large.model_cfg, method, g, layer_map)
  if layer_map is not None and method == "stack":
    method = "direct"

  reader = ckpt_lib.Checkpoints(directory, use_async=False)
  src_state, data_state, _ = reader.restore(step, src_abstract)
  jax.block_until_ready(src_state)
  reader.close()
  data_state = data_position_in_windows(data_state, meta)
  t_read = time.perf_counter()

  learn_batches = None
  if method == "learn" or width_method == "learn":
    from growjax import data as data_lib
    it = data_lib.train_iterator(large_cfg.data, seed=large_cfg.seed,
                                 global_batch_size=large_cfg.train.global_batch_size)
    learn_batches = (jnp.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in it)
  with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
    state = grow_state(src_state, src_model, src_tx, large, method=method,
                       width_method=width_method, layer_map=layer_map, opt_state=opt_state,
                       schedule=schedule, rng=jax.random.key(seed), learn_batches=learn_batches)
    jax.block_until_ready(state)
  t_grow = time.perf_counter()

  meta_out = state_lib.run_meta(large)
  meta_out["flops_seen"] = float(meta.get("flops_seen", 0.0))  # the small stage's compute
  # `learn` trains its expansion through the large model: count that compute too, so
  # loss-vs-FLOPs comparisons stay fair (each learn phase ~ LEARN_STEPS large steps).
  learn_phases = (method == "learn") + (width_method == "learn")
  meta_out["flops_seen"] += learn_phases * LEARN_STEPS * large.tokens_per_step * \
      large.model_cfg.flops_per_token(large_cfg.data.seq_len)
  meta_out["grown_from"] = {"checkpoint": f"{directory}/{step}", "model": meta["model"],
                            "method": method, "width_method": width_method,
                            "layer_map": list(layer_map) if layer_map else None,
                            "opt_state": opt_state, "schedule": schedule}
  writer = ckpt_lib.Checkpoints(out_dir, use_async=False, keep=1)
  writer.save(int(state_lib.to_host(state.step)), state, data_state, meta_out, force=True)
  writer.wait()
  writer.close()
  t_end = time.perf_counter()

  device_peak = None
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    device_peak = stats["peak_bytes_in_use"]
  report = {
      "source": f"{directory}/{step}", "out": out_dir, "step": int(state_lib.to_host(state.step)),
      "src_params": src_model.num_params(), "dst_params": large.model_cfg.num_params(),
      "read_s": t_read - t0, "grow_s": t_grow - t_read, "write_s": t_end - t_grow,
      "total_s": t_end - t0,
      "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "peak_device_bytes": device_peak,
  }
  if jax.process_index() == 0:
    log(f"grew {report['source']} ({report['src_params'] / 1e6:.1f}M params, "
        f"{src_model.num_layers}L x {src_model.embed_dim}) -> {out_dir} "
        f"({report['dst_params'] / 1e6:.1f}M, {large.model_cfg.num_layers}L x "
        f"{large.model_cfg.embed_dim}) by {method}"
        f"{' + width ' + width_method if width_method else ''} at step {report['step']}: "
        f"read {report['read_s']:.2f}s, grow {report['grow_s']:.2f}s, "
        f"write {report['write_s']:.2f}s; peak host {report['peak_host_bytes'] / 2**30:.2f} GiB"
        + (f", peak device {device_peak / 2**30:.2f} GiB" if device_peak else ""))
  return report
