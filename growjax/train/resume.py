"""Where a run starts: its own newest intact checkpoint (damaged ones set aside), else
`config.train.init_from` (a grown or imported model), else a fresh init; and which model
fields a resumed run may change (how it is computed, not what it is)."""

from __future__ import annotations

import dataclasses

import jax
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import distributed
from growjax.data import loader as data_loader
from growjax.data import tokenizer_record
from growjax.model import FAMILY_FIELDS, ModelConfig
from growjax.train import guard as guard_lib
from growjax.train import mask_ramp
from growjax.train.state import (Setup, TrainState, init_state, to_host,
                                 with_fp8_history)
from growjax.train.step import abstract_state


def restore_or_init(setup: Setup, checkpoints: ckpt_lib.Checkpoints, data_iter, writer
                    ) -> tuple[TrainState, dict]:
  """Latest own checkpoint, else `train.init_from` (e.g. a grown model), else fresh.

  The latest step is process 0's view, agreed by all. Each step is checked cheaply
  (`checkpoint.verify_step`) before it is restored; a damaged one is set aside
  (`<step>.damaged-<n>`) and the newest intact step resumed, unless
  `config.train.damaged_checkpoint='refuse'`. Existing checkpoints win over
  `train.init_from` (said in one line). Returns the state and the checkpoint's
  metadata ({} when fresh)."""
  cfg = setup.cfg
  mode = cfg.train.get("damaged_checkpoint", "fallback")
  if mode not in ("fallback", "refuse"):
    raise ValueError(f"config.train.damaged_checkpoint={mode!r} — choose 'fallback' or "
                     f"'refuse'")
  [latest] = distributed.agreed([_or_minus_one(checkpoints.latest_step())])
  while latest >= 0:
    step_dir = f"{checkpoints.directory}/{latest}"
    problem = checkpoints.verify(latest)
    if problem is None:
      meta = ckpt_lib.read_meta(checkpoints.directory, latest)
      _check_same_model(meta, setup, checkpoints.directory, latest)
      try:
        state, data_state, meta = checkpoints.restore(
            latest, abstract_state(setup, mask_ramp.restored(meta), latest),
            keep_fp8_history=True)
        state = with_fp8_history(setup, state)
        if int(to_host(state.step)) != latest:   # a step dir renamed or swapped
          problem = (step_dir, f"holds the state of step {int(to_host(state.step))}")
      except Exception as e:  # noqa: BLE001 - a restore failure of a checked step = damage
        problem = (step_dir, f"restore failed ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:160]})")
    [damaged] = distributed.agreed([int(problem is not None)])
    if not damaged:
      if data_state:
        data_iter.set_state(data_state)
      if cfg.train.init_from:
        writer.text(f"resuming {step_dir}; config.train.init_from={cfg.train.init_from} is "
                    f"ignored because this workdir already has checkpoints")
      else:
        writer.text(f"resumed from {step_dir}")
      return state, meta
    where, why = problem or (step_dir, "damaged on process 0")
    if mode == "refuse":
      raise ValueError(f"checkpoint step {latest} is damaged: {where} is {why} — move "
                       f"{step_dir} aside, or set config.train.damaged_checkpoint=fallback "
                       f"to resume from the newest intact step")
    if jax.process_index() == 0:
      moved = checkpoints.set_aside(latest)
    else:
      moved = f"{step_dir}.damaged-*"
    distributed.agreed([0])   # the rename is done before anyone lists again
    if jax.process_index() != 0:
      checkpoints.manager.reload()
    earlier = [s for s in checkpoints.complete_steps() if s < latest]
    [previous] = distributed.agreed([earlier[-1] if earlier else -1])
    writer.text(f"WARNING: checkpoint step {latest} is damaged ({where}: {why}); moved "
                f"aside to {moved}, resuming from "
                + (f"step {previous}" if previous >= 0 else "scratch"))
    latest = previous
  if cfg.train.init_from:
    directory, step = ckpt_lib.resolve(cfg.train.init_from, field="config.train.init_from")
    [step] = distributed.agreed([step])
    meta = ckpt_lib.read_meta(directory, step)
    if _model_identity(meta.get("model")) != _model_identity(
        dataclasses.asdict(setup.model_cfg)):
      raise ValueError(
          f"config.train.init_from={cfg.train.init_from!r} holds model {meta.get('model')}, "
          f"which differs from config.model {dataclasses.asdict(setup.model_cfg)}; grow it "
          f"with `growjax grow` to this config first.")
    ramp = mask_ramp.from_grown(meta, step, cfg.growth.get("mask_ramp_steps", 0),
                                f"config.train.init_from={cfg.train.init_from!r}")
    source = ckpt_lib.Checkpoints(directory, use_async=False)
    state, data_state, _ = source.restore(step, setup.abstract_state, keep_fp8_history=True)
    state = with_fp8_history(setup, state)
    source.close()
    if data_state:
      data_iter.set_state(data_state)
    writer.text(f"initialised from {directory}/{step} (step {int(to_host(state.step))})")
    # The grown checkpoint's FLOPs are the small stage's: kept apart so that
    # `growjax speedup` can check a grown run counts them.
    meta = dict(meta, small_stage_flops=float(meta.get("flops_seen", 0.0)))
    for key in (guard_lib.WINDOW_META, guard_lib.EVAL_META):   # another model's losses
      meta.pop(key, None)
    if ramp is not None:
      state = state.replace(masks=ramp.initial(setup.mesh, step))
      meta[mask_ramp.META_KEY] = ramp.to_meta()
      writer.text(f"MSG masks: new layers and units ramp in from 0 to 1 over steps "
                  f"{ramp.start}..{ramp.end} (config.growth.mask_ramp_steps={ramp.ramp})")
    return state, meta
  return init_state(setup, jax.random.key(cfg.seed)), {}


def run_tokenizer(cfg, checkpoints: ckpt_lib.Checkpoints) -> tuple[dict, str | None]:
  """The tokenizer this run trains with — its data's — checked before any compute
  against the checkpoint it starts from (its own newest, else `train.init_from`): a
  different one is refused. Its files are copied into the checkpoints dir
  (`tokenizer/`) so every step carries them; returns the record for the metadata
  (`model_max_length`: the starting checkpoint's, else the tokenizer's, else
  `data.seq_len`) and a spec that builds the tokenizer (None when its files are gone)."""
  record, spec, where = data_loader.dataset_tokenizer(cfg.data)
  latest = checkpoints.latest_step()
  start, name = {}, ""
  if latest is not None:
    try:   # a damaged step is the restore's to set aside, not this check's
      start, name = ckpt_lib.read_meta(checkpoints.directory, latest), \
          f"{checkpoints.directory}/{latest}"
    except (ValueError, OSError, KeyError):
      pass
  elif cfg.train.init_from:
    directory, step = ckpt_lib.resolve(cfg.train.init_from, field="config.train.init_from")
    start, name = ckpt_lib.read_meta(directory, step), \
        f"config.train.init_from={cfg.train.init_from!r}"
  theirs = start.get(tokenizer_record.META_KEY) or {}
  if theirs.get("identity") and theirs["identity"] != record.get("identity"):
    raise ValueError(
        f"the data ({where}) is tokenized by {record.get('spec')!r} (identity "
        f"{record.get('identity')}), but {name} was trained with {theirs.get('spec')!r} "
        f"(identity {theirs['identity']}) — prepare the data with the checkpoint's "
        f"tokenizer (growjax prepare-data --config.data.tokenizer=...), or start "
        f"another run")
  longest = theirs.get("model_max_length") or record.get("model_max_length") or \
      int(cfg.data.seq_len)
  record = dict(record, model_max_length=int(longest))
  if spec is None:
    return dict(record, files=[], dir=None), None
  folder, _ = tokenizer_record.source_files(spec)
  kept = tokenizer_record.keep_files(
      record, epath.Path(checkpoints.directory) / tokenizer_record.FOLDER, folder,
      write=jax.process_index() == 0)
  return kept, tokenizer_record.spec_in(kept, checkpoints.directory) or spec


# How the model is computed, not what it is: a run started from a checkpoint may change
# these (remat, attention kernel, FP8, the cuDNN packing the trainer resolves from 'auto').
# Declared on `ModelConfig`'s fields; kept here under its old name.
COMPUTE_FIELDS = ModelConfig.compute_fields()


def _model_identity(model: dict | None) -> dict | None:
  """A checkpoint's recorded model less its compute fields: what it is. The recorded dict
  is kept whole (fields of older growjax versions included), not rebuilt as a config."""
  if model is None:
    return None
  families = {f.name: f.default for f in dataclasses.fields(ModelConfig)
              if f.name in FAMILY_FIELDS}   # absent from checkpoints older than them
  return {**families, **{k: v for k, v in model.items() if k not in COMPUTE_FIELDS}}


def _check_same_model(meta: dict, setup: Setup, directory: str, step: int) -> None:
  """A workdir whose checkpoints hold another model shape: one line naming both."""
  theirs, ours = meta.get("model") or {}, dataclasses.asdict(setup.model_cfg)
  keys = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
          "vocab_size")
  diff = [k for k in keys if k in theirs and k in ours and theirs[k] != ours[k]]
  if not diff:
    return

  def shape(m):
    return ", ".join(f"{k}={m[k]}" for k in diff)

  raise ValueError(f"{directory}/{step} holds another model ({shape(theirs)}) than "
                   f"config.model ({shape(ours)}) — use another --workdir, or start from it "
                   f"with config.train.init_from after `growjax grow`")


def _or_minus_one(step: int | None) -> int:
  return -1 if step is None else int(step)
