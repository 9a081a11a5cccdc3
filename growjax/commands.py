"""What each `growjax` command is: its flags (absl; configs through ml_collections'
`config_flags`, so `--config configs/x.py:arg --config.train.steps=10` works as in
big_vision), a one-line summary, an example, and the one library call it makes
(imported inside its run function, so a command loads only what it uses). `COMMANDS`
is the table `growjax.cli` parses against and runs; no training logic lives here, and
how a person meets the tool (help text, one-line errors, exit codes) is `growjax.cli`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

BAD_INPUT, RUNTIME_FAILURE = 2, 1


class CommandError(Exception):
  """A one-line failure with its exit code (raised anywhere below a command)."""

  def __init__(self, message: str, code: int = BAD_INPUT):
    super().__init__(message)
    self.code = code


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  summary: str
  example: str
  define: Callable[[flags.FlagValues], None]
  run: Callable[[flags.FlagValues], None]
  required: tuple[str, ...] = ()
  positional: str | None = None   # the flag that one bare argument sets (`inspect DIR`)



# The running command's own arguments (after its name), set by `growjax.cli.run_command`:
# `growjax sweep --jobs` starts its children with them.
CURRENT_ARGV: list[str] = []


# ----------------------------------------------------------------------------- flags


def _distributed_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process; "
                      "Cloud TPU, SLURM and Open MPI are detected without it).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", 0, "number of processes (multi-process).",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", -1, "this process's index (multi-process).",
                       flag_values=fv)
  flags.DEFINE_integer("heartbeat_timeout", 0, "seconds without a heartbeat after which a "
                       "process counts as lost and every other ends with one line naming "
                       "it (default: $GROWJAX_HEARTBEAT_TIMEOUT_S, else JAX's 100).",
                       flag_values=fv)


def _init_distributed(fv: flags.FlagValues) -> None:
  from growjax import distributed
  distributed.maybe_initialize(fv.coordinator_address, fv.num_processes, fv.process_id)


def _config_flag(fv: flags.FlagValues, help_text: str) -> None:
  config_flags.DEFINE_config_file("config", None, help_text, flag_values=fv, lock_config=True)


def parse_layer_map(values: list[str] | None) -> list[int] | None:
  """`--layer_map 0,1,-1,1` -> [0, 1, -1, 1]; -1 marks a new layer."""
  if not values:
    return None
  out = []
  for v in values:
    try:
      out.append(int(v))
    except ValueError:
      raise CommandError(f"--layer_map entry {v!r} is not an integer — give one source "
                         f"layer index per large layer, -1 for a new layer, e.g. "
                         f"--layer_map=0,1,-1,-1") from None
  return out


# -------------------------------------------------------------------------- commands


def _define_train(fv):
  _config_flag(fv, "run config file (configs/*.py[:arg]); override any field with "
               "--config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", "", "run directory: checkpoints, TensorBoard files, "
                      "metrics.jsonl; a local path or gs://bucket/path "
                      "(default runs/<config name>).", flag_values=fv)
  _distributed_flags(fv)


def default_workdir(config_arg: str) -> str:
  """runs/<config name>[_<arg values>]: `configs/llama.py:size=1b,batch=24` ->
  `runs/llama_1b_24`, so runs of one file with different args never share a workdir."""
  path, _, arg = config_arg.partition(":")
  parts = [os.path.splitext(os.path.basename(path))[0]]
  parts += [kv.partition("=")[2] or kv for kv in arg.split(",") if kv]
  return os.path.join("runs", "_".join(re.sub(r"[^\w.-]", "-", p) for p in parts))


def _run_train(fv):
  from etils import epath
  workdir = fv.workdir or default_workdir(fv["config"].config_filename)
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise CommandError(f"--workdir={workdir} is a file — give a directory (it is created "
                       f"if missing)")
  _init_distributed(fv)
  from growjax import lease
  from growjax.growth import stages
  with lease.hold(workdir, command="train", flag="--workdir"):   # small/ grown/ large/ too
    stages.run(fv.config, workdir)


def _define_grow(fv):
  flags.DEFINE_string("from", None, "source checkpoint: a workdir, its checkpoints/ dir or "
                      "one step's dir.", flag_values=fv)
  flags.DEFINE_integer("step", None, "source step (default: latest complete).", flag_values=fv)
  flags.DEFINE_string("to", None, "output directory (a growjax checkpoints dir).",
                      flag_values=fv)
  _config_flag(fv, "the LARGE model's run config.")
  flags.DEFINE_string("method", "stack", "depth operator: stack, interpolate, stack_bottom, "
                      "stack_middle, stack_top, llama_pro (copies with zero output "
                      "projections: function kept), solar (two copies, seam layers dropped), "
                      "middle (MIDAS: middle layers repeated), direct (with --layer_map), "
                      "zero, random, learn.",
                      flag_values=fv)
  flags.DEFINE_string("width_method", None, "width operator: direct, split (direct with "
                      "zero-sum noise on the copies: function kept, symmetry broken), zero, "
                      "random, learn.", flag_values=fv)
  flags.DEFINE_float("width_noise", None, "split's noise std relative to a copy's RMS "
                     "(default 1.0).", flag_values=fv)
  flags.DEFINE_float("drop_fraction", 0.0, "Drop-Upcycling, when a dense model is grown "
                     "into an MoE config: re-draw this fraction of every expert's hidden "
                     "units (0: exact upcycling).", flag_values=fv)
  flags.DEFINE_integer("g", None, "growth factor; checked against the configs' depths.",
                       flag_values=fv)
  flags.DEFINE_list("layer_map", None, "explicit layer map: one source layer per large "
                    "layer, -1 for a new layer (zero / random), e.g. 0,1,0,1 with "
                    "--method=direct or 0,-1,1,-1 with --method=zero.", flag_values=fv)
  flags.DEFINE_boolean("allow_inexact", False, "accept a growth whose operator cannot keep "
                       "the function here (width direct to a non-whole embed_dim factor); "
                       "the logit change is measured and printed.", flag_values=fv)
  flags.DEFINE_enum("opt_state", "reset", ["reset", "grow"], "optimizer state at growth.",
                    flag_values=fv)
  flags.DEFINE_enum("schedule", "continue", ["continue", "restart"], "LR schedule: continue "
                    "from the small model's step (the paper) or restart at step 0.",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed for random / learn operators.", flag_values=fv)
  _distributed_flags(fv)


def _run_grow(fv):
  layer_map = parse_layer_map(fv.layer_map)
  _init_distributed(fv)
  from growjax import lease
  from growjax.growth import offline
  with lease.hold(fv.to, command="grow", flag="--to"):
    offline.grow_checkpoint(
        fv["from"].value, fv.to, fv.config, method=fv.method, width_method=fv.width_method,
        step=fv.step, g=fv.g, layer_map=layer_map, opt_state=fv.opt_state,
        schedule=fv.schedule, allow_inexact=fv.allow_inexact, seed=fv.seed,
        width_noise=fv.width_noise, drop_fraction=fv.drop_fraction)


def _define_plan(fv):
  flags.DEFINE_float("params", None, "target model parameters N (e.g. 7e9; default: "
                     "--config's model).", flag_values=fv)
  flags.DEFINE_float("flops", None, "compute budget C in FLOPs (e.g. 8.4e22).", flag_values=fv)
  flags.DEFINE_float("tokens", None, "alternatively the target's training tokens D; "
                     "C = 6 N D.", flag_values=fv)
  _config_flag(fv, "optional run config: d in steps (and N, D from it when --params, "
               "--flops and --tokens are not given).")
  flags.DEFINE_string("sweep", "", "a finished `growjax sweep` workdir: say whether this "
                      "plan's d lies past the crossover it measured.", flag_values=fv)


def _run_plan(fv):
  from growjax.growth import timing
  print(timing.describe(fv.params, fv.flops, fv.tokens, fv.config))
  if fv.sweep:   # where growth stopped paying on the user's own runs
    from growjax.growth.study import analysis, grid
    params = fv.params or grid.target_params(fv.config)
    tokens = fv.tokens or (None if fv.flops else timing.config_tokens(fv.config))
    flops = fv.flops or timing.budget_flops(params, tokens)
    print(analysis.crossover_warning(fv.sweep, timing.growth_tokens(params, flops),
                                     params / timing.RECOMMENDED_G))


def _define_tokenizer(fv):
  flags.DEFINE_list("input", None, "text files (globs allowed): .txt/.md (one document per "
                    "file), .jsonl/.jsonl.gz (--text_key field), .parquet (--text_key column).",
                    flag_values=fv)
  flags.DEFINE_string("text_key", "text", "the JSON field / parquet column holding the text.",
                      flag_values=fv)
  flags.DEFINE_integer("vocab_size", 32000, "vocabulary size.", flag_values=fv)
  flags.DEFINE_enum("kind", "spm", ["spm", "hf_bpe"], "spm: a SentencePiece model "
                    "(PREFIX.model); hf_bpe: a byte-level BPE tokenizer.json (Hugging Face "
                    "tokenizers) in the folder PREFIX.", flag_values=fv)
  flags.DEFINE_string("model_prefix", None, "output: writes PREFIX.model (spm) or "
                      "PREFIX/tokenizer.json (hf_bpe).", flag_values=fv)


def _run_tokenizer(fv):
  from growjax.data import formats, tokenizers
  # Documents, not raw lines: a .jsonl's text field, a parquet's text column.
  docs = formats.iter_documents(",".join(fv.input), fv.text_key)
  first = next(docs, None)
  if first is None:
    raise CommandError(f"--input {','.join(fv.input)} holds no document — give non-empty "
                       f"files")
  from growjax import progress
  train, spec = ((tokenizers.train_hf_bpe, "hf") if fv.kind == "hf_bpe" else
                 (tokenizers.train_sentencepiece, "spm"))
  with progress.Reading(f"tokenizer {fv.kind} ({fv.vocab_size} tokens)") as reading:
    path = train(reading.count(itertools.chain([first], docs)), fv.vocab_size,
                 fv.model_prefix)
  print(f"wrote {path}; use it with --config.data.tokenizer={spec}:{path}")


def _define_prepare_data(fv):
  _config_flag(fv, "run config file whose config.data names the sources, tokenizer and "
               "seq_len (and config.model.vocab_size the model the data is for).")
  flags.DEFINE_string("out", "", "output directory, local or gs:// (default: "
                      "config.data.prepared_dir).", flag_values=fv)
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "tokenizing worker processes.",
                       flag_values=fv)
  flags.DEFINE_float("shard_mb", 256.0, "tokens per shard, in MB.", flag_values=fv)
  flags.DEFINE_boolean("verify", False, "when the output is already prepared, read every "
                       "shard back and check its sha256 against index.json.", flag_values=fv)


def _run_prepare_data(fv):
  from growjax import lease
  from growjax.data import prepare
  cfg = fv.config
  out = fv.out or cfg.data.prepared_dir
  if not out:
    raise CommandError("no output directory — give --out DIR (local or gs://) or set "
                       "config.data.prepared_dir")
  if fv.shard_mb <= 0:
    raise CommandError(f"--shard_mb={fv.shard_mb} must be positive")
  with lease.hold(out, command="prepare-data", flag="--out",
                  label=f"--out={out}" if fv.out else f"config.data.prepared_dir={out}"):
    prepare.prepare(cfg.data, out, workers=fv.workers, vocab_size=cfg.model.vocab_size,
                    shard_mb=fv.shard_mb, verify=fv.verify)
  print(f"prepared {out}; train on it with --config.data.prepared_dir={out}")


def _define_speedup(fv):
  flags.DEFINE_string("scratch", None, "the run trained from scratch (its workdir).",
                      flag_values=fv)
  flags.DEFINE_string("grown", None, "the grow run (its workdir, with small/ and large/).",
                      flag_values=fv)
  flags.DEFINE_float("target_loss", None, "loss to reach (default: the scratch run's final "
                     "evaluation loss).", flag_values=fv)
  flags.DEFINE_string("out", None, "plot path (default GROWN/speedup.png).", flag_values=fv)


def _run_speedup(fv):
  from growjax.growth import speedup
  speedup.run(fv.scratch, fv.grown, fv.target_loss, fv.out)


# --- issue 16: growjax sweep (logic in growjax/growth/sweep.py and growjax/growth/study/) ---


def _define_sweep(fv):
  _config_flag(fv, "the TARGET model's run config (its model, train.steps, batch, data); "
               "override fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("workdir", "", "sweep directory: WORKDIR/scratch, "
                      "WORKDIR/d{D}_g{G}_{METHOD}, sweep_summary.json and the plots "
                      "(default runs/<config name>_sweep).", flag_values=fv)
  flags.DEFINE_list("d", None, "growth timings d: small-stage steps (or tokens, --d_unit); "
                    "default 10%,25%,50% of config.train.steps.", flag_values=fv)
  flags.DEFINE_enum("d_unit", "steps", ["steps", "tokens"], "unit of --d.", flag_values=fv)
  flags.DEFINE_list("g", None, "growth factors; each divides config.model.num_layers "
                    "(default: 2 and 4 where they divide it).", flag_values=fv)
  flags.DEFINE_list("methods", None, "depth operators to sweep (config.growth.method; "
                    "default: the config's).", flag_values=fv)
  flags.DEFINE_float("budget_flops", None, "budget C for the recommended d and g (default: "
                     "the sweep's own, the scratch run's FLOPs).", flag_values=fv)
  flags.DEFINE_float("target_loss", None, "loss to reach (default: the scratch run's final "
                     "evaluation loss).", flag_values=fv)
  flags.DEFINE_list("also", [], "workdirs of other finished sweeps (other N or C) whose "
                    "best d joins the law fit.", flag_values=fv)
  flags.DEFINE_boolean("dry_run", False, "print the grid, every run's steps and FLOPs, and "
                       "stop before any compute.", flag_values=fv)
  flags.DEFINE_list("only", [], "run only these runs of the grid (names as in --dry_run; "
                    "scratch always), e.g. a d sweep at g=4 plus one g=2 run.",
                    flag_values=fv)
  flags.DEFINE_string("jobs", "1", "train this many runs at a time on this host, each a "
                      "child process with 1/N of the accelerator's memory and its log in "
                      "WORKDIR/logs/. It pays only where one run leaves the device idle: at "
                      "16L x 512 with 64k-token steps two jobs on an H100 ran at 0.9x one "
                      "(docs/RESULTS.md). auto: as many as the target's compiled train step "
                      "fits in memory.", flag_values=fv)
  flags.DEFINE_string("job", "", "internal: train this one run of the grid and stop (what "
                      "--jobs starts).", flag_values=fv)
  _distributed_flags(fv)


def _run_sweep(fv):
  workdir = fv.workdir or default_workdir(fv["config"].config_filename) + "_sweep"
  _init_distributed(fv)
  import contextlib
  from etils import epath
  from growjax import lease
  from growjax.growth import sweep
  # A --jobs child is this very command line, one run of it, --jobs=1 (absl: last wins).
  child = [sys.executable, "-m", "growjax", "sweep", *CURRENT_ARGV, f"--workdir={workdir}",
           "--jobs=1"]
  # The sweep holds its workdir; a --jobs child (its parent holds that) holds its run's.
  if fv.dry_run:   # writes nothing
    held = contextlib.nullcontext()
  elif fv.job:
    run_dir = epath.Path(workdir) / fv.job
    held = lease.hold(str(run_dir), command=f"sweep --job={fv.job}",
                      label=f"the run dir {run_dir} of --job={fv.job}")
  else:
    held = lease.hold(workdir, command="sweep", flag="--workdir")
  with held:
    sweep.run(fv.config, workdir, d=fv.d, g=fv.g, methods=fv.methods, d_unit=fv.d_unit,
              budget_flops=fv.budget_flops, target_loss=fv.target_loss, also=fv.also,
              dry_run=fv.dry_run, only=fv.only, jobs=fv.jobs, job=fv.job,
              child_argv=child)


# --- issue 29: growjax compile (logic in growjax/growth/compile_run.py, growjax/train/aot.py) ---


def _define_compile(fv):
  _config_flag(fv, "the run config (a grow run compiles every stage and growth); override "
               "fields with --config.FIELD=VALUE.")
  flags.DEFINE_string("topology", None, "the TPU slice to compile for, as Cloud TPU names "
                      "it: v5e-8 (v5litepod-8), v5p-256, v6e-256, v4-32.", flag_values=fv)
  flags.DEFINE_integer("slices", 1, "slices of that topology (multi-slice: data parallel "
                       "across slices over the data-centre network).", flag_values=fv)
  flags.DEFINE_boolean("json", False, "print the report as JSON.", flag_values=fv)
  flags.DEFINE_boolean("estimate", False, "also find the largest per-chip batch and the "
                       "cheapest remat policy that fit each stage, by compiling, and print "
                       "them as config overrides.", flag_values=fv)
  flags.DEFINE_boolean("bound", False, "also the compiler's step-time bound for each train "
                       "step (two extra compiles each): step time, tokens/s per chip, MFU.",
                       flag_values=fv)


def _run_compile(fv):
  # Nothing runs on a device: compile-only TPU devices on any host, and a TPU VM's own
  # chips stay free for the run (set before JAX starts a backend; the config file has
  # imported jax already, so through its config).
  import contextlib
  import jax
  if not os.environ.get("JAX_PLATFORMS"):
    with contextlib.suppress(RuntimeError):   # a backend already started: keep it
      jax.config.update("jax_platforms", "cpu")
  from growjax.growth import compile_run
  compile_run.run(fv.config, fv.topology, slices=fv.slices, as_json=fv.json,
                  estimate=fv.estimate, bound=fv.bound)


# --- issue 13: Hugging Face in / out, eval, sample, inspect (logic in their modules) ---


def _define_import_hf(fv):
  flags.DEFINE_string("from", None, "a local Hugging Face LLaMA directory (config.json + "
                      "*.safetensors).", flag_values=fv)
  flags.DEFINE_string("to", None, "output growjax checkpoints dir (new or empty).",
                      flag_values=fv)
  flags.DEFINE_string("mesh", "", "mesh to restore onto, e.g. fsdp=-1,tensor=2 (default: "
                      "all devices on fsdp).", flag_values=fv)
  flags.DEFINE_string("dtype", "bfloat16", "compute dtype of the model config written "
                      "(params are float32).", flag_values=fv)
  flags.DEFINE_boolean("allow_vocab_padding", False, "accept a vocab_size larger than the "
                       "tokenizer's (padding rows).", flag_values=fv)
  _distributed_flags(fv)


def _run_import_hf(fv):
  _init_distributed(fv)
  from growjax import lease
  from growjax.interop import hf
  with lease.hold(fv.to, command="import-hf", flag="--to"):
    hf.import_hf(fv["from"].value, fv.to, mesh_spec=fv.mesh, dtype=fv.dtype,
                 allow_vocab_padding=fv.allow_vocab_padding)


def _define_export_hf(fv):
  flags.DEFINE_string("from", None, "growjax checkpoint: a workdir, checkpoints dir or step "
                      "dir.", flag_values=fv)
  flags.DEFINE_integer("step", None, "step (default: latest complete).", flag_values=fv)
  flags.DEFINE_string("to", None, "output Hugging Face directory (new or empty).",
                      flag_values=fv)
  flags.DEFINE_string("dtype", "auto", "tensor dtype: auto (the imported model's, else "
                      "float32), float32, bfloat16, float16.", flag_values=fv)
  flags.DEFINE_string("max_shard_size", "5GB", "safetensors file size above which the "
                      "weights are sharded (with model.safetensors.index.json).",
                      flag_values=fv)
  flags.DEFINE_string("mesh", "", "mesh to restore onto (default: all devices on fsdp).",
                      flag_values=fv)
  flags.DEFINE_bool("verify", False, "load the export with transformers and report the "
                    "largest logit difference and the mean KL against growjax on a probe "
                    "batch (needs torch + transformers; says skipped without them).",
                    flag_values=fv)
  _distributed_flags(fv)


def _run_export_hf(fv):
  _init_distributed(fv)
  from growjax import lease
  from growjax.interop import hf
  with lease.hold(fv.to, command="export-hf", flag="--to"):
    done = hf.export_hf(fv["from"].value, fv.to, step=fv.step, dtype=fv.dtype,
                        max_shard_size=fv.max_shard_size, mesh_spec=fv.mesh)
  if fv.verify:
    from growjax.interop import hf_verify
    hf_verify.verify(fv["from"].value, done["out"], step=fv.step)


def _define_eval(fv):
  _config_flag(fv, "run config (its data section: validation split and tokenizer).")
  flags.DEFINE_string("checkpoint", None, "growjax checkpoint (workdir, checkpoints dir or "
                      "step dir).", flag_values=fv)
  flags.DEFINE_integer("step", None, "step (default: latest complete).", flag_values=fv)
  flags.DEFINE_integer("batches", 0, "validation batches for perplexity (0: "
                       "config.train.eval_batches; -1: skip perplexity).", flag_values=fv)
  flags.DEFINE_list("tasks", [], "multiple-choice JSONL files (one object per line: context, "
                    "choices, gold).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 16, "sequences per forward pass (tasks).",
                       flag_values=fv)
  flags.DEFINE_string("mesh", "", "mesh, e.g. fsdp=-1,tensor=2 (default: all devices on "
                      "fsdp).", flag_values=fv)
  flags.DEFINE_string("out", "", "also write the results as JSON here.", flag_values=fv)
  _distributed_flags(fv)


def _run_eval(fv):
  _init_distributed(fv)
  from growjax.interop import evaluate
  evaluate.run(fv.config, fv.checkpoint, step=fv.step, batches=fv.batches,
               tasks=fv.tasks, batch_size=fv.batch_size, mesh_spec=fv.mesh, out=fv.out)


def _define_sample(fv):
  flags.DEFINE_string("checkpoint", None, "growjax checkpoint (workdir, checkpoints dir or "
                      "step dir).", flag_values=fv)
  flags.DEFINE_multi_string("prompt", None, "a prompt (repeat the flag for a batch).",
                            flag_values=fv)
  flags.DEFINE_string("tokenizer", "", "tokenizer spec (default: the checkpoint's own: its "
                      "imported tokenizer, else its config.data.tokenizer).", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt.",
                       flag_values=fv)
  flags.DEFINE_float("temperature", 0.0, "0: greedy; else sample at this temperature.",
                     flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0: all).", flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "keep the smallest set of tokens with this much "
                     "probability (1: all).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "sampling seed.", flag_values=fv)
  flags.DEFINE_integer("step", None, "step (default: latest complete).", flag_values=fv)
  flags.DEFINE_string("mesh", "", "mesh (default: all devices on fsdp).", flag_values=fv)
  _distributed_flags(fv)


def _run_sample(fv):
  _init_distributed(fv)
  from growjax.interop import sample
  sample.run(fv.checkpoint, fv.prompt, tokenizer=fv.tokenizer,
             max_new_tokens=fv.max_new_tokens, temperature=fv.temperature, top_k=fv.top_k,
             top_p=fv.top_p, seed=fv.seed, step=fv.step, mesh_spec=fv.mesh)


def _define_inspect(fv):
  flags.DEFINE_string("checkpoint", None, "the checkpoint (also the bare argument): a "
                      "workdir, checkpoints dir or step dir.", flag_values=fv)
  flags.DEFINE_integer("step", None, "step (default: latest complete).", flag_values=fv)
  flags.DEFINE_boolean("json", False, "print JSON instead of text.", flag_values=fv)
  flags.DEFINE_boolean("verify", False, "also check every step's files against the sizes "
                       "and xxh3 checksums recorded at save (exit 2 if one is damaged).",
                       flag_values=fv)


def _run_inspect(fv):
  from growjax.interop import inspect_checkpoint
  inspect_checkpoint.run(fv.checkpoint, step=fv.step, as_json=fv.json, check=fv.verify)


def _define_convert_mc(fv):
  flags.DEFINE_list("input", None, "the task's public files: .parquet (Hugging Face) or "
                    ".jsonl / .json rows.", flag_values=fv)
  flags.DEFINE_string("out", None, "output JSONL for `growjax eval --tasks`.", flag_values=fv)
  flags.DEFINE_string("format", "auto", "hellaswag, arc, piqa, winogrande, or auto (from "
                      "the rows' fields).", flag_values=fv)
  flags.DEFINE_string("labels", "", "a labels file, one per row (PIQA's original "
                      "valid-labels.lst).", flag_values=fv)


def _run_convert_mc(fv):
  from growjax.interop import mc_tasks
  mc_tasks.convert(fv.input, fv.out, fv.format, fv.labels)


ISSUE13_COMMANDS = (
    Command("import-hf", "a local Hugging Face LLaMA directory -> a growjax checkpoint",
            "growjax import-hf --from ~/models/TinyLlama-1.1B --to runs/tinyllama",
            _define_import_hf, _run_import_hf, ("from", "to")),
    Command("export-hf", "a growjax checkpoint -> a Hugging Face directory (Llama, Mistral, "
            "Qwen2, Qwen3, OLMo-2)",
            "growjax export-hf --from runs/tinyllama_x4 --to ~/models/tinyllama-x4",
            _define_export_hf, _run_export_hf, ("from", "to")),
    Command("eval", "perplexity, bits per byte and zero-shot multiple-choice accuracy",
            "growjax eval --config configs/tiny.py --checkpoint runs/tiny "
            "--tasks hellaswag.jsonl", _define_eval, _run_eval, ("config", "checkpoint")),
    Command("sample", "generate text from a checkpoint (greedy, temperature, top-k, top-p)",
            "growjax sample --checkpoint runs/tiny --prompt 'ROMEO:' --max_new_tokens 64",
            _define_sample, _run_sample, ("checkpoint", "prompt")),
    Command("convert-mc", "HellaSwag / ARC / PIQA / Winogrande files -> eval's task JSONL",
            "growjax convert-mc --input hellaswag/validation.parquet --out hellaswag.jsonl",
            _define_convert_mc, _run_convert_mc, ("input", "out")),
    Command("inspect", "what a checkpoint holds, read from its metadata only",
            "growjax inspect runs/tiny", _define_inspect, _run_inspect, ("checkpoint",),
            positional="checkpoint"),
)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("train", "train a model (or a whole grow run) from a config file",
            "growjax train --config configs/tiny.py --workdir runs/tiny "
            "--config.train.steps=1000", _define_train, _run_train, ("config",)),
    Command("grow", "grow a saved checkpoint into a larger model, offline",
            "growjax grow --from runs/small --to runs/grown "
            "--config configs/llama.py:size=24l_2048 --method stack --g 4",
            _define_grow, _run_grow, ("from", "to", "config")),
    Command("plan", "the paper's growth timing d and factor g for a model size and budget",
            "growjax plan --params 7e9 --tokens 7e11", _define_plan, _run_plan),
    Command("tokenizer", "train a SentencePiece (or HF BPE) tokenizer on local files",
            "growjax tokenizer --input 'corpus/*.jsonl' --vocab_size 32000 --model_prefix tok",
            _define_tokenizer, _run_tokenizer, ("input", "model_prefix")),
    Command("prepare-data", "tokenize a config's corpus into sharded ArrayRecord, in parallel",
            "growjax prepare-data --config configs/my_corpus.py --workers 8",
            _define_prepare_data, _run_prepare_data, ("config",)),
    Command("speedup", "FLOPs a grown run saved against a scratch run, with a plot",
            "growjax speedup --scratch runs/scratch --grown runs/grow",
            _define_speedup, _run_speedup, ("scratch", "grown")),
    Command("sweep", "grid of growth timings d and factors g at equal FLOPs; fits the d law",
            "growjax sweep --config configs/repro/sweep.py --workdir runs/sweep "
            "--d 50,150,300 --g 2,4", _define_sweep, _run_sweep, ("config",)),
    *ISSUE13_COMMANDS,
    Command("compile", "compile every step of a run for a TPU slice, on this host: memory "
            "per chip, fit",
            "growjax compile --config configs/llama.py:size=1b --topology v5e-8",
            _define_compile, _run_compile, ("config", "topology")),
)}
