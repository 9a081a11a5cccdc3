"""The `growjax` command: `growjax SUBCOMMAND [flags]`.

Each subcommand declares its flags (absl; configs through ml_collections'
`config_flags`, so `--config configs/x.py:arg --config.train.steps=10` works as
in big_vision), a one-line summary and an example, and calls one library
function; no training logic lives here. What lives here is how a person meets
the tool:

- `growjax --help` lists the commands; `growjax CMD --help` its flags, their
  defaults and an example.
- Flags may be spelt with dashes or underscores (`--layer-map`, `--layer_map`).
- Every failure is one line, `growjax CMD: <what is wrong> — <the fix>`, exit 2
  for bad input (a ValueError / FileNotFoundError from the library, a bad flag or
  config) and 1 for a runtime failure; `--debug` (or GROWJAX_DEBUG=1) adds the
  traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import re
import sys
import traceback
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
        width_noise=fv.width_noise)


def _define_plan(fv):
  flags.DEFINE_float("params", None, "target model parameters N (e.g. 7e9).", flag_values=fv)
  flags.DEFINE_float("flops", None, "compute budget C in FLOPs (e.g. 8.4e22).", flag_values=fv)
  flags.DEFINE_float("tokens", None, "alternatively the target's training tokens D; "
                     "C = 6 N D.", flag_values=fv)
  _config_flag(fv, "optional run config: d in steps.")


def _run_plan(fv):
  from growjax.growth import timing
  print(timing.describe(fv.params, fv.flops, fv.tokens, fv.config))


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
  docs = itertools.chain([first], docs)
  if fv.kind == "hf_bpe":
    path = tokenizers.train_hf_bpe(docs, fv.vocab_size, fv.model_prefix)
    print(f"wrote {path}; use it with --config.data.tokenizer=hf:{path}")
    return
  path = tokenizers.train_sentencepiece(docs, fv.vocab_size, fv.model_prefix)
  print(f"wrote {path}; use it with --config.data.tokenizer=spm:{path}")


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
  from growjax.interop import hf, lease
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
  _distributed_flags(fv)


def _run_export_hf(fv):
  _init_distributed(fv)
  from growjax.interop import hf, lease
  with lease.hold(fv.to, command="export-hf", flag="--to"):
    hf.export_hf(fv["from"].value, fv.to, step=fv.step, dtype=fv.dtype,
                 max_shard_size=fv.max_shard_size, mesh_spec=fv.mesh)


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


ISSUE13_COMMANDS = (
    Command("import-hf", "a local Hugging Face LLaMA directory -> a growjax checkpoint",
            "growjax import-hf --from ~/models/TinyLlama-1.1B --to runs/tinyllama",
            _define_import_hf, _run_import_hf, ("from", "to")),
    Command("export-hf", "a growjax checkpoint -> a Hugging Face LlamaForCausalLM directory",
            "growjax export-hf --from runs/tinyllama_x4 --to ~/models/tinyllama-x4",
            _define_export_hf, _run_export_hf, ("from", "to")),
    Command("eval", "perplexity, bits per byte and zero-shot multiple-choice accuracy",
            "growjax eval --config configs/tiny.py --checkpoint runs/tiny "
            "--tasks hellaswag.jsonl", _define_eval, _run_eval, ("config", "checkpoint")),
    Command("sample", "generate text from a checkpoint (greedy, temperature, top-k, top-p)",
            "growjax sample --checkpoint runs/tiny --prompt 'ROMEO:' --max_new_tokens 64",
            _define_sample, _run_sample, ("checkpoint", "prompt")),
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
            "growjax plan --params 7e9 --tokens 2e12", _define_plan, _run_plan, ("params",)),
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
)}


def usage() -> str:
  lines = ["usage: growjax COMMAND [flags]", "", "commands:"]
  lines += [f"  {c.name:<12} {c.summary}" for c in COMMANDS.values()]
  lines += ["", "`growjax COMMAND --help` lists a command's flags, defaults and an example.",
            "Every command takes --debug to print the traceback of a failure."]
  return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


def _underscored(arg: str) -> str:
  """--layer-map=0,1 -> --layer_map=0,1 (absl's spelling); values stay as they are."""
  if not arg.startswith("--"):
    return arg
  name, eq, value = arg.partition("=")
  return "--" + name[2:].replace("-", "_") + eq + value


def command_help(cmd: Command, fv: flags.FlagValues) -> str:
  lines = [f"usage: growjax {cmd.name} [flags]", "", f"{cmd.summary}.", "", "flags:"]
  for name in sorted(fv):
    flag = fv[name]
    if flag.name != name:   # short aliases
      continue
    value = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else (
        repr(flag.default) if isinstance(flag.default, str) else flag.default)
    default = "" if flag.default is None else f" (default: {value})"
    need = " (required)" if name in cmd.required else ""
    lines.append(f"  --{name}{need}{default}")
    lines.append(f"      {flag.help}")
  lines += ["  --debug", "      print the traceback of a failure (also GROWJAX_DEBUG=1).",
            "", "example:", f"  {cmd.example}"]
  return "\n".join(lines)


def _config_error(argv: list[str], exc: BaseException) -> CommandError:
  """A config file or override that failed to load -> the flag and the fix."""
  config_arg = next((a for a in argv if a.startswith("--config=")), None)
  if config_arg is None and "--config" in argv[:-1]:
    config_arg = "--config=" + argv[argv.index("--config") + 1]
  text = str(exc).strip().strip("'\"").replace("\\n", "\n")
  if isinstance(exc, SyntaxError):
    return CommandError(f"{config_arg}: syntax error at line {exc.lineno}: {exc.msg} — fix "
                        f"the config file")
  if "No such file" in text or isinstance(exc, FileNotFoundError):
    return CommandError(f"{config_arg}: no such file — give the path of a config file, e.g. "
                        f"--config=configs/tiny.py")
  if isinstance(exc, AttributeError) and "get_config" in text:
    return CommandError(f"{config_arg}: the file defines no get_config() — a config file "
                        f"defines `def get_config(arg=None)` returning a ConfigDict")
  if isinstance(exc, (AttributeError, KeyError)):
    field = text.splitlines()[0].strip("'\"\\ ")
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    override = next((a.partition("=")[0] for a in argv
                     if a.startswith("--config.") and field in a.partition("=")[0]), None)
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return CommandError(f"{override or config_arg}: config has no field {field!r}{hint} — "
                        f"check the spelling against the config file")
  last = text.splitlines()[-1] if text else type(exc).__name__
  return CommandError(f"{config_arg}: {last} — check the config file and its overrides")


def parse(cmd: Command, argv: list[str]) -> flags.FlagValues:
  """Flags of `cmd` from `argv` (without the command words); raises CommandError.

  config_flags finds `--config.FIELD=VALUE` overrides in `sys.argv`, so it is set to
  these args while parsing: `main(argv)` in-process parses exactly like the console."""
  argv = [_underscored(a) for a in argv if a not in ("--debug", "--nodebug")]
  saved = sys.argv
  sys.argv = [f"growjax {cmd.name}"] + argv
  try:
    return _parse_flags(cmd, argv)
  finally:
    sys.argv = saved


def _parse_flags(cmd: Command, argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  cmd.define(fv)
  if any(a in ("-h", "--help", "--helpfull", "-help") for a in argv):
    print(command_help(cmd, fv))
    raise SystemExit(0)
  # config_flags loads the file as module `config_config`, reusing one left in
  # sys.modules by an earlier call in this process; start clean each time.
  sys.modules.pop("config_config", None)
  try:
    rest = fv([f"growjax {cmd.name}"] + argv)[1:]
  except flags.IllegalFlagValueError as e:
    text = str(e)
    if "--config" in text and ("Error" in text or "error" in text):
      cause = e.__cause__ or e.__context__
      if cause is not None:
        raise _config_error(argv, cause) from None
    raise CommandError(f"{text} — see `growjax {cmd.name} --help`") from None
  except flags.Error as e:
    raise CommandError(f"{e} — see `growjax {cmd.name} --help`") from None
  except (Exception, SystemExit) as e:  # config_flags loads the file while parsing
    if isinstance(e, SystemExit) and e.code in (0, None):
      raise
    raise _config_error(argv, e) from None
  if "config" in fv:
    error = getattr(fv["config"].value, "_error", None)  # config_flags defers load errors
    if error is not None:
      raise _config_error(argv, error) from None
  if rest and cmd.positional:
    if len(rest) > 1 or fv[cmd.positional].value is not None:
      raise CommandError(f"unexpected argument(s) {' '.join(rest)} — e.g. {cmd.example}")
    fv[cmd.positional].value = rest[0]
  missing = [f"--{n}" for n in cmd.required if fv[n].value is None]
  if missing:
    raise CommandError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       f"required — e.g. {cmd.example}")
  return fv


def _runtime_message(exc: BaseException) -> str:
  if getattr(exc, "one_line", None):   # checkpoint.DiskFull: directory, needed, free, fix
    return str(exc.one_line)
  if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
    where = exc.filename or "the output directory"
    return (f"no space left on the device writing {where} — free space or lower "
            f"config.train.keep_checkpoints; the last complete checkpoint is kept")
  first = (str(exc).strip().splitlines() or [""])[0]
  if not type(exc).__module__.startswith("growjax"):   # growjax's own lines name paths
    first = first[:300]
  return (f"{type(exc).__name__}: {first} — rerun with --debug for the traceback")


def _classify(exc: BaseException) -> tuple[str, int]:
  from growjax import console
  if isinstance(exc, CommandError):
    return str(exc), exc.code
  if isinstance(exc, (ValueError, FileNotFoundError)):
    return str(exc), BAD_INPUT
  if isinstance(exc, KeyboardInterrupt):
    return "interrupted — rerun the same command to resume", console.INTERRUPTED
  return _runtime_message(exc), RUNTIME_FAILURE


# The running command's own arguments (after its name): `growjax sweep --jobs` starts its
# children with them.
CURRENT_ARGV: list[str] = []
_LOG: dict[str, str] = {}   # the running command's log file of library messages


def _log_dir(cmd: Command, fv: flags.FlagValues) -> str | None:
  """Where the command's library log goes: the run directory of train and sweep (which
  hold only growjax's files). Commands whose output directory must be new or empty
  (grow, import-hf, export-hf, prepare-data) and the rest log to a temp file."""
  if cmd.name == "train":
    return fv.workdir or default_workdir(fv["config"].config_filename)
  if cmd.name == "sweep" and not fv.job:
    return fv.workdir or default_workdir(fv["config"].config_filename) + "_sweep"
  return None


def run_command(cmd: Command, argv: list[str], debug: bool) -> int:
  """Runs `cmd`; every failure, signal and lost process becomes one line (growjax.console:
  library output goes to a log file unless --debug)."""
  from growjax import console
  CURRENT_ARGV[:] = argv
  _LOG.clear()
  message, code = None, 0
  with console.session(cmd.name):
    try:
      fv = parse(cmd, argv)
      if "heartbeat_timeout" in fv and fv.heartbeat_timeout:
        os.environ["GROWJAX_HEARTBEAT_TIMEOUT_S"] = str(fv.heartbeat_timeout)
      with contextlib.ExitStack() as routing:
        if not debug:
          directory = _log_dir(cmd, fv)
          if directory and "process_id" in fv and fv.process_id > 0:
            directory = os.path.join(directory, "logs", f"process_{fv.process_id}")
          _LOG["path"] = console.log_path(directory, cmd.name)
          routing.enter_context(console.routed(_LOG["path"]))
        cmd.run(fv)
        message, code = console.after_run()
    except SystemExit:
      raise
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line
      message, code = _classify(e)
      if debug:
        traceback.print_exc()
    distributed = sys.modules.get("growjax.distributed")
    if distributed is not None and distributed.multiprocess():
      distributed.finish(failed=code not in (0, console.INTERRUPTED))
    if message:
      print(f"growjax {cmd.name}: {message}", file=sys.stderr, flush=True)
    if code and distributed is not None and distributed.multiprocess():
      sys.stdout.flush()
      os._exit(code)   # JAX's teardown would wait for (or abort on) a lost peer
  return code


# JAX preallocates 75% of a GPU's memory by default; MaxText's GPU recipes run at 0.94,
# where the faster cuDNN packed layout for document masking fits at 1.1B, batch 24
# (growjax.train.attention_choice, whose line names the value). Set only where the user has not,
# before JAX creates its GPU client; CPU and TPU ignore it.
GPU_MEM_FRACTION = "0.94"


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else BAD_INPUT
  name = argv[1]
  if name not in COMMANDS:
    print(f"growjax: unknown command {name!r} — choose one of {', '.join(COMMANDS)}\n\n"
          f"{usage()}", file=sys.stderr)
    return BAD_INPUT
  debug = "--debug" in argv or os.environ.get("GROWJAX_DEBUG", "") not in ("", "0")
  if not debug:
    from growjax import console
    console.native_log_defaults()
  return run_command(COMMANDS[name], argv[2:], debug)


if __name__ == "__main__":
  sys.exit(main())
