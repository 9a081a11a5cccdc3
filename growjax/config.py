"""The base run config every `configs/*.py` file starts from, and its validation.

Config files call `base_config()` and change fields; the returned ConfigDict is
locked, so a misspelt field in a file or on the command line
(`--config.train.stpes=10`) is an error rather than a silent no-op.
`validate` runs before any array is made and names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from growjax import data as data_lib
from growjax import sharding
from growjax.model import ModelConfig, abstract_params, logical_axes

# Model sizes shipped with growjax: the paper's TinyLlama-shaped family, its 6 -> 24
# layer base / target pair, Llama-2-7B shapes (the paper's 7B target, its 8-layer
# base for G_stack x4, and the 7B stacked x4 again: 128 layers, ~26B), and CPU sizes.
_PRESET_FIELDS = ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads",
                  "head_dim", "mlp_dim")
_PRESET_SIZES = (
    ("tiny", (384, 4, 128, 4, 2, 32, 384)),
    ("125m", (32000, 12, 768, 12, 12, 64, 2048)),
    ("410m", (32000, 24, 1024, 16, 16, 64, 2816)),
    ("1b", (32000, 22, 2048, 32, 4, 64, 5632)),
    ("6l_2048", (32000, 6, 2048, 32, 4, 64, 5632)),
    ("24l_2048", (32000, 24, 2048, 32, 4, 64, 5632)),
    ("7b", (32000, 32, 4096, 32, 32, 128, 11008)),
    ("8l_4096", (32000, 8, 4096, 32, 32, 128, 11008)),
    ("128l_4096", (32000, 128, 4096, 32, 32, 128, 11008)),
)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_PRESET_FIELDS, sizes)) for name, sizes in _PRESET_SIZES}


def parse_arg(arg: str | None, where: str, **defaults) -> ml_collections.ConfigDict:
  """A config file's arg, big_vision style: `size=1b,batch=24` -> ConfigDict, each value
  cast to its default's type (`ml_collections.config_dict.placeholder(int)` for an
  optional value). An unknown key is an error naming `where` and the known keys."""
  args = ml_collections.ConfigDict(defaults)
  for key, _, value in (kv.partition("=") for kv in (arg or "").split(",") if kv):
    if key not in args:
      raise ValueError(f"{where}: unknown arg {key!r}; the args are {', '.join(defaults)}")
    args[key] = args.get_type(key)(value)
  return args


def model_config(preset: str, **overrides) -> ml_collections.ConfigDict:
  if preset not in MODEL_PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}.")
  fields = dataclasses.asdict(ModelConfig(**MODEL_PRESETS[preset]))
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def set_field(cfg: ml_collections.ConfigDict, assignment: str) -> None:
  """`model.remat_policy=dots` as `--config.model.remat_policy=dots` would set it (the
  value cast to the field's type), for scripts that build configs in code (benchmarks)."""
  path, eq, value = assignment.partition("=")
  *parents, leaf = path.split(".")
  node = cfg
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not eq or not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise ValueError(f"--set {assignment!r}: not FIELD=VALUE of a config field "
                     f"(e.g. model.remat_policy=dots)")
  kind = node.get_type(leaf)
  if kind is bool:
    flag = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}
    if value.lower() not in flag:
      raise ValueError(f"--set {assignment!r}: {path} is true or false")
    node[leaf] = flag[value.lower()]
  else:
    node[leaf] = kind(value)


def base_config(model: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config(model)
  c.data = data_lib.default_data_config()
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      global_batch_size=32,          # sequences per optimizer step, over all devices
      grad_accum_steps=1,            # micro-batches per step (each global_batch/accum rows)
      z_loss=1e-4,                   # PaLM z-loss weight on log(Z)^2
      moe_balance_loss=0.01,         # MoE models: weight of the router's load-balancing
      moe_router_z_loss=1e-3,        # loss and of its z-loss, each the mean over layers
      loss_chunk_len=512,            # sequence positions per LM-head chunk in the loss
      log_every=10,
      eval_every=200,                # 0 disables periodic evaluation
      eval_batches=4,
      checkpoint_every=200,
      keep_checkpoints=3,
      async_checkpointing=True,
      init_from="",                  # checkpoint dir (or step dir) whose params start the run
      damaged_checkpoint="fallback",  # a damaged latest checkpoint on resume: 'fallback' (set
                                     # it aside as <step>.damaged-<n>, resume the newest
                                     # intact step) or 'refuse' (stop with an error)
      max_bad_steps=10,              # stop after this many consecutive non-finite steps (a
                                     # NaN/Inf loss or gradient norm: the update is skipped)
      spike_zscore=6.0,              # loss-spike guard (growjax.train.guard): a step loss this
                                     # many std above the running window, and more than
                                     # spike_min_rise above its mean, rolls back to the
                                     # newest good checkpoint and skips the batches since
                                     # it; so does an eval loss that is not finite or rose
                                     # by more than spike_min_rise; 0 = off
      spike_min_rise=0.25,           # the least relative rise over the window's mean (or
                                     # the last eval) that counts as a spike
      spike_window=50,               # steps in the spike guard's running window
      profile_steps="",              # 'A,B': a jax.profiler trace of steps A..B into
                                     # WORKDIR/profile (TensorBoard / XProf); '' = off
      final_sample_tokens=0,         # > 0: end the run by printing a greedy sample of this
      final_sample_prompt="",        # many tokens after this prompt (growjax.interop.sample)
      loggers="tensorboard",         # metric writers beside metrics.jsonl, comma-separated:
                                     # 'tensorboard' (WORKDIR/tb), 'wandb' (Weights &
                                     # Biases: pip install 'growjax[wandb]'; offline with
                                     # WANDB_MODE=offline); '' = metrics.jsonl alone
      wandb_project="growjax",       # the W&B project; the run is named after the workdir
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=3e-4, end_lr=3e-5, warmup_steps=3000, decay_steps=0,  # 0: = train.steps
      schedule="cosine",             # 'cosine' or 'wsd' (warmup-stable-decay: peak_lr held,
      decay_fraction=0.2,            # then the last decay_fraction of decay_steps down to
      decay_shape="1-sqrt",          # end_lr by decay_shape: '1-sqrt', 'linear', 'cosine')
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
      decay_embeddings=False, decay_norms=False,
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1))
  c.sharding_rules = [list(r) for r in sharding.DEFAULT_RULES]
  # A whole grow run (`growjax train` with growth.enabled): the small model trains
  # small_steps steps, is grown into config.model, and the large model trains on to
  # config.train.steps. Both share config.train/optimizer/data unless set here.
  c.growth = ml_collections.ConfigDict(dict(
      enabled=False,
      small_model=model_config(model),
      small_steps=0,                 # tokens d = small_steps x small batch x seq_len
      small_global_batch_size=0,     # 0: config.train.global_batch_size
      small_mesh=ml_collections.ConfigDict(dict(data=1, fsdp=-1, expert=1, tensor=1)),
      method="stack",                # depth operator (growjax.growth; e.g. llama_pro, solar)
      width_method="",               # '' (none) or direct / split / zero / random / learn
      width_noise=1.0,               # split: zero-sum noise on the copies, std relative to a
                                     # copy's RMS (breaks their symmetry; function kept)
      drop_fraction=0.0,             # dense small_model -> MoE model: Drop-Upcycling re-draws
                                     # this fraction of each expert's units (0: exact)
      layer_map=(),                  # explicit depth map (-1: a new layer); () or []: none
      allow_inexact=False,           # accept width direct to a non-whole embed factor (the
                                     # logits move; the change is measured and printed)
      opt_state="reset",             # reset (the paper) or grow (map Adam moments)
      schedule="continue",           # continue the LR schedule (the paper) or restart
      mask_ramp_steps=0,             # MSG growth: new layers / units enter through a mask
                                     # ramped 0 -> 1 over this many steps of the run started
                                     # from the grown checkpoint (growjax.train.mask_ramp); 0 = off
      events="",                     # several growths in one run (gradual stacking):
                                     # 'LAYERS@STEP[:METHOD[:OPT_STATE]],...', e.g.
                                     # '4@100,8@200' = small_model grows to 4 layers at
                                     # step 100, to 8 (= config.model) at 200; '' = one
                                     # growth at small_steps (growjax.growth.stages)
  ))
  c.metrics = ml_collections.ConfigDict(dict(
      peak_tflops_per_chip=0.0,      # 0: look up the chip in growjax.train.metrics.PEAK_TFLOPS
      tensorboard=True,              # False: no TensorBoard files, whatever
                                     # config.train.loggers says
  ))
  c.lock()
  return c


def validate(cfg: ml_collections.ConfigDict, num_devices: int, slices: int = 1
             ) -> dict[str, int]:
  """Checks a run config's model, mesh, train and optimizer fields before any compute;
  returns the resolved mesh shape (`config.mesh` per slice over several TPU slices). The
  data fields: `validate_data`."""
  model = ModelConfig.from_config(cfg.model)
  model.validate()
  mesh_sizes = sharding.mesh_shape(cfg.mesh, num_devices, slices)
  rules = sharding.rules_from_config(cfg.sharding_rules)
  axes = logical_axes(model)
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(abstract_params(model)))
  sharding.check_divisible(axes, shapes, mesh_sizes, rules)

  t = cfg.train
  for f in ("steps", "global_batch_size", "grad_accum_steps", "log_every", "eval_batches",
            "checkpoint_every", "keep_checkpoints"):
    if int(t[f]) <= 0:
      raise ValueError(f"config.train.{f} must be positive, got {t[f]}.")
  if t.global_batch_size % t.grad_accum_steps:
    raise ValueError(f"config.train.global_batch_size={t.global_batch_size} is not divisible "
                     f"by config.train.grad_accum_steps={t.grad_accum_steps}.")
  dp = 1
  rule_map = dict(rules)
  batch_axes = rule_map.get("act_batch") or ()
  for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes):
    dp *= mesh_sizes[a]
  micro = t.global_batch_size // t.grad_accum_steps
  if micro % dp:
    raise ValueError(
        f"config.train.global_batch_size={t.global_batch_size} (micro-batch {micro} with "
        f"grad_accum_steps={t.grad_accum_steps}) is not divisible by the data-parallel size "
        f"{dp} (mesh data x fsdp = {mesh_sizes['data']} x {mesh_sizes['fsdp']}); use a "
        f"multiple of {dp * t.grad_accum_steps}.")
  seq_len = cfg.data.seq_len
  chunk = min(t.loss_chunk_len, seq_len)
  if chunk <= 0 or seq_len % chunk:
    raise ValueError(f"config.train.loss_chunk_len={t.loss_chunk_len} must be positive and "
                     f"divide config.data.seq_len={seq_len}.")
  if int(t.max_bad_steps) <= 0:
    raise ValueError(f"config.train.max_bad_steps must be positive, got {t.max_bad_steps}.")
  if float(t.spike_zscore) < 0:
    raise ValueError(f"config.train.spike_zscore must be >= 0 (0 = off), got "
                     f"{t.spike_zscore}.")
  if float(t.get("spike_min_rise", 0.25)) < 0:
    raise ValueError(f"config.train.spike_min_rise must be >= 0, got {t.spike_min_rise}.")
  if float(t.spike_zscore) > 0 and int(t.spike_window) < 2:
    raise ValueError(f"config.train.spike_window must be >= 2 with spike_zscore > 0, got "
                     f"{t.spike_window}.")
  profile_steps(t)
  loggers(t)
  if "growth" in cfg:
    check_mask_ramp_steps(cfg.growth.get("mask_ramp_steps", 0))
  o = cfg.optimizer
  if o.peak_lr <= 0 or o.end_lr < 0 or o.end_lr > o.peak_lr:
    raise ValueError(f"config.optimizer: need 0 <= end_lr <= peak_lr and peak_lr > 0, got "
                     f"peak_lr={o.peak_lr}, end_lr={o.end_lr}.")
  if o.warmup_steps < 0:
    raise ValueError(f"config.optimizer.warmup_steps must be >= 0, got {o.warmup_steps}.")
  check_schedule(o, int(t.steps))
  if t.init_from:
    from etils import epath   # local paths and gs:// alike
    if not epath.Path(os.path.expanduser(t.init_from)).exists():
      raise ValueError(f"config.train.init_from={t.init_from!r} does not exist; point it at "
                       f"a growjax checkpoint directory (e.g. the output of `growjax grow`).")
  return mesh_sizes


LOGGERS = ("tensorboard", "wandb")


def loggers(train_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`config.train.loggers` ('tensorboard,wandb') as names, each known and, for wandb,
  its package importable: refused before any compute."""
  raw = str(train_cfg.get("loggers", "tensorboard") or "")
  names = tuple(n.strip() for n in raw.split(",") if n.strip())
  unknown = [n for n in names if n not in LOGGERS]
  if unknown:
    raise ValueError(f"config.train.loggers={raw!r}: unknown logger {unknown[0]!r} — choose "
                     f"from {', '.join(LOGGERS)} (comma-separated), or '' for metrics.jsonl "
                     f"alone")
  import importlib.util   # noqa: PLC0415
  if "wandb" in names and importlib.util.find_spec("wandb") is None:
    raise ValueError(f"config.train.loggers={raw!r} names wandb, but the wandb package is "
                     f"not installed — pip install 'growjax[wandb]', or drop wandb from "
                     f"config.train.loggers")
  return names


def profile_steps(train_cfg: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """`config.train.profile_steps` ('A,B', steps A..B inclusive, 1 <= A <= B) as (A, B);
  None when off ('')."""
  raw = str(train_cfg.get("profile_steps", "") or "").strip()
  if not raw:
    return None
  try:
    a, b = (int(x) for x in raw.split(","))
  except ValueError:
    a = b = 0
  if not 1 <= a <= b:
    raise ValueError(f"config.train.profile_steps={raw!r} is not a step range — write "
                     f"'FIRST,LAST' with 1 <= FIRST <= LAST (e.g. '100,105'), or '' for off")
  return a, b


def validate_data(cfg: ml_collections.ConfigDict) -> None:
  """Checks `config.data` against the machine (files present, tokenizer loadable, its
  vocabulary within the model's; a prepared dataset's index.json against config.data).
  Apart from `validate`: growing a checkpoint reads no data, so it must not need the
  training corpus on the machine."""
  data_lib.check_data_config(cfg.data)
  data_lib.check_against_model(cfg.data, int(cfg.model.vocab_size))


def check_mask_ramp_steps(value) -> None:
  """`config.growth.mask_ramp_steps`: a whole number of steps, 0 for off."""
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"config.growth.mask_ramp_steps={value!r} is not a step count — give "
                     f"the steps over which new layers and units ramp in from 0 to 1 "
                     f"(e.g. 100), or 0 for no masks")


SCHEDULES = ("cosine", "wsd")             # config.optimizer.schedule
DECAY_SHAPES = ("1-sqrt", "linear", "cosine")   # config.optimizer.decay_shape (WSD)


def wsd_decay_start(total_steps: int, decay_fraction: float) -> int:
  """The first step of a WSD schedule's decay: the last `decay_fraction` of the steps."""
  return total_steps - int(round(total_steps * decay_fraction))


def check_schedule(o: ml_collections.ConfigDict, train_steps: int) -> None:
  """`config.optimizer.schedule` and, for 'wsd', a decay that fits after the warmup."""
  schedule = o.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={schedule!r} — choose one of "
                     f"{', '.join(SCHEDULES)}")
  if schedule != "wsd":
    return
  fraction, shape = float(o.get("decay_fraction", 0.2)), o.get("decay_shape", "1-sqrt")
  if not 0 < fraction <= 1:
    raise ValueError(f"config.optimizer.decay_fraction={fraction} — give the share of the "
                     f"steps the WSD decay takes, in (0, 1] (e.g. 0.2)")
  if shape not in DECAY_SHAPES:
    raise ValueError(f"config.optimizer.decay_shape={shape!r} — choose one of "
                     f"{', '.join(DECAY_SHAPES)}")
  total = int(o.decay_steps or train_steps)
  start = wsd_decay_start(total, fraction)
  if start < int(o.warmup_steps):
    raise ValueError(f"config.optimizer: the WSD decay starts at step {start} "
                     f"(decay_fraction={fraction} of {total} steps), inside the warmup of "
                     f"{o.warmup_steps} steps — lower decay_fraction or warmup_steps")
