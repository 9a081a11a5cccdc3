"""The `growjax` command: `growjax SUBCOMMAND [flags]`.

Each subcommand parses its own absl flags (configs through ml_collections'
`config_flags`, so `--config configs/x.py:arg --config.train.steps=10` works
as in big_vision) and calls one library function; no logic lives here.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

USAGE = """usage: growjax COMMAND [flags]

commands:
  train      train a model (or a whole grow run) from a config file
  grow       grow a saved checkpoint into a larger model, offline
  plan       the paper's growth timing d and factor g for a model size and budget
  tokenizer  train a SentencePiece tokenizer on local text files
  speedup    FLOPs a grown run saved against a scratch run, with a plot

`growjax COMMAND --help` lists a command's flags."""


def _parse(fv: flags.FlagValues, argv: list[str]) -> None:
  try:
    fv(argv)
  except flags.Error as e:
    sys.exit(f"growjax {argv[0].split()[-1]}: {e}")


def _distributed_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", 0, "number of processes (multi-process).",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", -1, "this process's index (multi-process).",
                       flag_values=fv)


def _init_distributed(fv: flags.FlagValues) -> None:
  from growjax import distributed
  distributed.maybe_initialize(fv.coordinator_address, fv.num_processes, fv.process_id)


def cmd_train(argv: list[str]) -> int:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py[:arg]).",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", "", "run directory: checkpoints, TensorBoard files "
                      "(default runs/<config name>).", flag_values=fv)
  _distributed_flags(fv)
  _parse(fv, argv)
  if fv.config is None:
    sys.exit("growjax train: --config is required, e.g. --config configs/tiny.py")
  _init_distributed(fv)
  workdir = fv.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(fv["config"].config_filename))[0])
  from growjax import stages
  try:
    stages.run(fv.config, workdir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"growjax train: {e}")
  return 0


def cmd_grow(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("from", None, "source checkpoint: a workdir, its checkpoints/ dir or "
                      "one step's dir.", flag_values=fv)
  flags.DEFINE_integer("step", None, "source step (default: latest complete).", flag_values=fv)
  flags.DEFINE_string("to", None, "output directory (a growjax checkpoints dir).",
                      flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "the LARGE model's run config.",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("method", "stack", "depth operator: stack, interpolate, stack_bottom, "
                      "stack_middle, stack_top, direct (with --layer_map), zero, random, learn.",
                      flag_values=fv)
  flags.DEFINE_string("width_method", None, "width operator: direct, zero, random, learn.",
                      flag_values=fv)
  flags.DEFINE_integer("g", None, "growth factor; checked against the configs' depths.",
                       flag_values=fv)
  flags.DEFINE_list("layer_map", None, "explicit layer map for method=direct, e.g. 0,1,0,1.",
                    flag_values=fv)
  flags.DEFINE_enum("opt_state", "reset", ["reset", "grow"], "optimizer state at growth.",
                    flag_values=fv)
  flags.DEFINE_enum("schedule", "continue", ["continue", "restart"], "LR schedule: continue "
                    "from the small model's step (the paper) or restart at step 0.",
                    flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed for random / learn operators.", flag_values=fv)
  _distributed_flags(fv)
  _parse(fv, argv)
  for name in ("from", "to", "config"):
    if fv[name].value is None:
      sys.exit(f"growjax grow: --{name} is required.")
  _init_distributed(fv)
  from growjax import grow_checkpoint
  try:
    grow_checkpoint.grow_checkpoint(
        fv["from"].value, fv.to, fv.config, method=fv.method, width_method=fv.width_method,
        step=fv.step, g=fv.g,
        layer_map=[int(i) for i in fv.layer_map] if fv.layer_map else None,
        opt_state=fv.opt_state, schedule=fv.schedule, seed=fv.seed)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"growjax grow: {e}")
  return 0


def cmd_plan(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_float("params", None, "target model parameters N (e.g. 7e9).", flag_values=fv)
  flags.DEFINE_float("flops", None, "compute budget C in FLOPs (e.g. 8.4e22).", flag_values=fv)
  flags.DEFINE_float("tokens", None, "alternatively the target's training tokens D; "
                     "C = 6 N D.", flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "optional run config: d in steps.",
                                  flag_values=fv, lock_config=True)
  _parse(fv, argv)
  from growjax import plan
  try:
    print(plan.describe(fv.params, fv.flops, fv.tokens, fv.config))
  except ValueError as e:
    sys.exit(f"growjax plan: {e}")
  return 0


def cmd_tokenizer(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_list("input", None, "text files (globs allowed).", flag_values=fv)
  flags.DEFINE_integer("vocab_size", 32000, "vocabulary size.", flag_values=fv)
  flags.DEFINE_string("model_prefix", None, "output prefix: writes PREFIX.model.",
                      flag_values=fv)
  _parse(fv, argv)
  if not fv.input or not fv.model_prefix:
    sys.exit("growjax tokenizer: --input and --model_prefix are required.")
  from growjax.data import tokenizers
  try:  # globs are expanded by train_sentencepiece
    path = tokenizers.train_sentencepiece(",".join(fv.input), fv.vocab_size, fv.model_prefix)
  except ValueError as e:
    sys.exit(f"growjax tokenizer: {e}")
  print(f"wrote {path}; use it with --config.data.tokenizer=spm:{path}")
  return 0


def cmd_speedup(argv: list[str]) -> int:
  fv = flags.FlagValues()
  flags.DEFINE_string("scratch", None, "the run trained from scratch (its workdir).",
                      flag_values=fv)
  flags.DEFINE_string("grown", None, "the grow run (its workdir, with small/ and large/).",
                      flag_values=fv)
  flags.DEFINE_float("target_loss", None, "loss to reach (default: the scratch run's final "
                     "evaluation loss).", flag_values=fv)
  flags.DEFINE_string("out", None, "plot path (default GROWN/speedup.png).", flag_values=fv)

  def underscored(arg: str) -> str:
    """--target-loss=2 -> --target_loss=2 (absl's spelling); values stay as they are."""
    if not arg.startswith("--"):
      return arg
    name, eq, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + eq + value

  argv = [underscored(a) for a in argv]
  _parse(fv, argv)
  if not fv.scratch or not fv.grown:
    sys.exit("growjax speedup: --scratch and --grown are required.")
  from growjax import speedup
  try:
    speedup.run(fv.scratch, fv.grown, fv.target_loss, fv.out)
  except ValueError as e:
    sys.exit(f"growjax speedup: {e}")
  return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train, "grow": cmd_grow, "plan": cmd_plan, "tokenizer": cmd_tokenizer,
    "speedup": cmd_speedup}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in COMMANDS:
    print(f"growjax: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
    return 2
  return COMMANDS[name]([f"growjax {name}"] + argv[2:])


if __name__ == "__main__":
  sys.exit(main())
