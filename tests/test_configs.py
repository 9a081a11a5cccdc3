"""The config files: one per kind of run, each loading through the real `growjax train`
parser and passing `growjax.config.validate`; the old one-file-per-size configs they
replaced (issue 11) reproduced field for field; bad args named; no cloned blocks."""

import glob
import importlib.util
import os

import pytest

from growjax import cli
from growjax import config as config_lib
from growjax.data import corpora

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch, tmp_path):
  monkeypatch.chdir(REPO)   # config paths as a user types them: configs/llama.py:size=1b
  # configs/repro/larger.py reads its corpus folder from the environment.
  for split in ("train", "validation"):
    (tmp_path / "pycorpus" / split).mkdir(parents=True)
  monkeypatch.setenv(corpora.PYCORPUS_ENV, str(tmp_path / "pycorpus"))


def load(spec: str):
  """`configs/x.py[:args]` through the real command-line parser (config_flags, locked)."""
  return cli.parse(cli.COMMANDS["train"], [f"--config={spec}"]).config


def flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


# ------------------------------------------------------------ old configs reproduced

# The config files this replaced (as of commit 8050d81), each as the fields in which its
# get_config() differed from base_config(PRESET), printed from the old files when they
# were replaced; STDLIB_AND_PLAYS: the data fields growjax.data.corpora.stdlib_and_plays
# sets (machine-dependent paths). `growjax train` used them as `--config FILE[:ARG]`.
PAPER_2048 = {"data.seq_len": 2048, "model.remat_policy": "dots", "train.eval_every": 2000,
              "train.log_every": 50}
LLAMA = {**PAPER_2048, "train.checkpoint_every": 2000, "train.steps": 100_000}
GROW_2048 = {**PAPER_2048, "growth.enabled": True, "growth.small_model.remat_policy": "dots",
             "train.checkpoint_every": 1000, "train.global_batch_size": 1024}
GROW_TINY = {"data.seq_len": 128, "growth.enabled": True, "growth.small_model.dtype": "float32",
             "growth.small_model.num_layers": 2, "growth.small_steps": 100,
             "model.dtype": "float32", "model.num_layers": 8, "optimizer.end_lr": 3e-4,
             "optimizer.peak_lr": 3e-3, "optimizer.warmup_steps": 30,
             "train.checkpoint_every": 50, "train.eval_every": 50, "train.global_batch_size": 16,
             "train.log_every": 25, "train.steps": 300}
REPRO_16L = {"model.embed_dim": 512, "model.head_dim": 64, "model.mlp_dim": 1536,
             "model.num_heads": 8, "model.num_kv_heads": 8, "model.num_layers": 16}
REPRO_SCRATCH = {**REPRO_16L, "data.seq_len": 1024, "optimizer.end_lr": 1e-4,
                 "optimizer.peak_lr": 1e-3, "optimizer.warmup_steps": 90,
                 "train.checkpoint_every": 300, "train.eval_batches": 16,
                 "train.eval_every": 50, "train.global_batch_size": 64, "train.log_every": 25,
                 "train.loss_chunk_len": 1024, "train.steps": 900}
REPRO_STACK = {**REPRO_SCRATCH, "growth.enabled": True, "growth.small_steps": 300,
               "train.steps": 1124,
               **{"growth.small_" + k: v for k, v in REPRO_16L.items() if k != "model.num_layers"}}
STDLIB_AND_PLAYS = "stdlib_and_plays"

# (old --config, its replacement, PRESET, old fields unlike base_config(PRESET))
OLD_TO_NEW = [
    ("configs/llama_125m.py", "configs/llama.py:size=125m", "125m",
     {**LLAMA, "train.global_batch_size": 24}),
    ("configs/llama_125m.py:64", "configs/llama.py:size=125m,batch=64", "125m",
     {**LLAMA, "train.global_batch_size": 64}),
    ("configs/llama_410m.py", "configs/llama.py:size=410m", "410m",
     {**LLAMA, "train.global_batch_size": 16}),
    ("configs/llama_410m.py:64", "configs/llama.py:batch=64,size=410m", "410m",
     {**LLAMA, "train.global_batch_size": 64}),
    ("configs/tinyllama_1b.py", "configs/llama.py:size=1b", "1b",
     {**LLAMA, "train.global_batch_size": 24}),
    ("configs/tinyllama_1b.py:64", "configs/llama.py:size=1b,batch=64", "1b",
     {**LLAMA, "train.global_batch_size": 64}),
    ("configs/paper_base_6l.py", "configs/llama.py:size=6l_2048", "6l_2048",
     {**LLAMA, "train.global_batch_size": 8}),
    ("configs/paper_base_6l.py:64", "configs/llama.py:size=6l_2048,batch=64", "6l_2048",
     {**LLAMA, "train.global_batch_size": 64}),
    ("configs/paper_target_24l.py", "configs/llama.py:size=24l_2048", "24l_2048",
     {**LLAMA, "train.global_batch_size": 8}),
    ("configs/paper_target_24l.py:64", "configs/llama.py:size=24l_2048,batch=64", "24l_2048",
     {**LLAMA, "train.global_batch_size": 64}),
    ("configs/llama2_7b.py", "configs/llama.py:size=7b", "7b",
     {**PAPER_2048, "train.checkpoint_every": 1000, "train.global_batch_size": 1024,
      "train.steps": 143_000}),
    ("configs/llama2_7b.py:256", "configs/llama.py:size=7b,batch=256", "7b",
     {**PAPER_2048, "train.checkpoint_every": 1000, "train.global_batch_size": 256,
      "train.steps": 143_000}),
    ("configs/grow_stack_paper.py", "configs/grow.py:recipe=paper", "24l_2048",
     {**GROW_2048, "growth.small_model.num_layers": 6, "growth.small_steps": 5000,
      "train.steps": 100_000}),
    ("configs/grow_stack_paper.py:512", "configs/grow.py:recipe=paper,batch=512", "24l_2048",
     {**GROW_2048, "growth.small_model.num_layers": 6, "growth.small_steps": 5000,
      "train.steps": 100_000, "train.global_batch_size": 512}),
    ("configs/grow_stack_7b.py", "configs/grow.py:recipe=7b", "7b",
     {**GROW_2048, "growth.small_model.num_layers": 8, "growth.small_steps": 9500,
      "train.steps": 143_000}),
    ("configs/grow_stack_7b.py:256", "configs/grow.py:recipe=7b,batch=256", "7b",
     {**GROW_2048, "growth.small_model.num_layers": 8, "growth.small_steps": 9500,
      "train.steps": 143_000, "train.global_batch_size": 256}),
    ("configs/grow_7b_to_28b.py", "configs/grow.py:recipe=28b", "128l_4096",
     {**GROW_2048, "growth.small_model.num_layers": 32, "growth.small_steps": 14_000,
      "model.remat_policy": "full", "train.steps": 477_000}),
    ("configs/grow_7b_to_28b.py:256", "configs/grow.py:recipe=28b,batch=256", "128l_4096",
     {**GROW_2048, "growth.small_model.num_layers": 32, "growth.small_steps": 14_000,
      "model.remat_policy": "full", "train.steps": 477_000, "train.global_batch_size": 256}),
    ("configs/grow_stack_tiny.py", "configs/grow.py:recipe=tiny", "tiny", GROW_TINY),
    ("configs/grow_stack_tiny.py:zero", "configs/grow.py:recipe=tiny,method=zero", "tiny",
     {**GROW_TINY, "growth.method": "zero"}),
    ("configs/grow_stack_tiny.py:interpolate",
     "configs/grow.py:method=interpolate,recipe=tiny", "tiny",
     {**GROW_TINY, "growth.method": "interpolate"}),
    ("configs/repro/scratch.py", "configs/repro/replica.py:run=scratch", STDLIB_AND_PLAYS,
     REPRO_SCRATCH),
    ("configs/repro/scratch.py:100", "configs/repro/replica.py:run=scratch,steps=100",
     STDLIB_AND_PLAYS, {**REPRO_SCRATCH, "train.steps": 100}),
    ("configs/repro/stack.py", "configs/repro/replica.py:run=stack", STDLIB_AND_PLAYS,
     REPRO_STACK),
    ("configs/repro/stack.py:stack", "configs/repro/replica.py:run=stack,method=stack",
     STDLIB_AND_PLAYS, REPRO_STACK),
    ("configs/repro/stack.py:zero,300",
     "configs/repro/replica.py:run=stack,method=zero,small_steps=300", STDLIB_AND_PLAYS,
     {**REPRO_STACK, "growth.method": "zero"}),
    ("configs/repro/stack.py:zero,200",
     "configs/repro/replica.py:run=stack,method=zero,small_steps=200", STDLIB_AND_PLAYS,
     {**REPRO_STACK, "growth.method": "zero", "growth.small_steps": 200, "train.steps": 1049}),
]


@pytest.mark.parametrize("old,new,preset,fields", OLD_TO_NEW, ids=[c[0] for c in OLD_TO_NEW])
def test_new_config_reproduces_the_old_one(old, new, preset, fields):
  if preset == STDLIB_AND_PLAYS:
    expected = config_lib.base_config("tiny")
    corpora.stdlib_and_plays(expected.data)
  else:
    expected = config_lib.base_config(preset)
  expected = flatten(expected.to_dict())
  assert set(fields) <= set(expected)
  expected.update(fields)
  assert flatten(load(new).to_dict()) == expected


# Files that may name old configs (none: README.md and growjax/cli.py were updated).
PENDING: set[str] = set()


def test_old_config_files_are_gone_and_named_nowhere():
  old = sorted({c[0].partition(":")[0] for c in OLD_TO_NEW}) + ["configs/base.py"]
  assert not [p for p in old if os.path.exists(os.path.join(REPO, p))]
  named = []
  for root, dirs, files in os.walk(REPO):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d != "runs"
               and not d.endswith(".egg-info")]
    for name in files:
      path = os.path.relpath(os.path.join(root, name), REPO)
      if path in PENDING or path == "tests/test_configs.py" or not name.endswith(
          (".py", ".md", ".sh", ".sbatch")):
        continue
      with open(os.path.join(REPO, path)) as f:
        text = f.read()
      named += [(path, p) for p in old if p in text]
  assert not named


# -------------------------------------------------------- every file loads and validates

# Every config file and arg value, with a device count its batch and shapes divide.
RUNS = [
    ("configs/tiny.py", 8),
    *[(f"configs/llama.py:size={size}", 8) for size in
      ("125m", "410m", "1b", "6l_2048", "24l_2048", "7b", "8l_4096", "128l_4096")],
    ("configs/llama.py:size=1b,batch=256", 256),
    *[(f"configs/grow.py:recipe={r}", 8) for r in ("tiny", "paper", "7b", "28b")],
    ("configs/grow.py:recipe=7b,batch=256,method=zero", 64),
    ("configs/repro/replica.py:run=scratch", 8),
    ("configs/repro/replica.py:run=stack,method=zero,small_steps=200,steps=600", 8),
    ("configs/repro/larger.py:run=scratch", 8),
    ("configs/repro/larger.py:run=stack,seed=1", 8),
    ("configs/repro/sweep.py", 8),
    ("configs/repro/sweep.py:method=zero,steps=300", 8),
    *[(f"configs/repro/operators.py:{run}", 8) for run in
      ["scratch"] + [f"{d},{m}" for d in ("depth", "width")
                     for m in ("direct", "zero", "random", "learn")]],
    ("configs/repro/operators.py:width,random,msg,small=300", 8),
]


@pytest.mark.parametrize("spec,num_devices", RUNS, ids=[r[0] for r in RUNS])
def test_config_loads_through_the_cli_and_validates(spec, num_devices):
  cfg = load(spec)
  mesh = config_lib.validate(cfg, num_devices)
  assert mesh["fsdp"] == num_devices
  if cfg.growth.enabled:   # the small stage's model on the same mesh, batch and sequence
    small = cfg.copy_and_resolve_references()
    small.model = cfg.growth.small_model
    config_lib.validate(small, num_devices)


def test_every_config_file_is_run_above():
  files = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs/**/*.py"),
                                                        recursive=True)}
  # configs/hf.py reads an imported checkpoint: tests/test_hf.py loads it on one.
  assert files == {spec.partition(":")[0] for spec, _ in RUNS} | {"configs/hf.py"}


def test_llama_sizes_are_every_preset_but_tiny():
  spec = importlib.util.spec_from_file_location("llama_cfg", os.path.join(REPO, "configs",
                                                                         "llama.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert set(module.SIZES) == set(config_lib.MODEL_PRESETS) - {"tiny"}


def test_every_config_docstring_lists_its_args_and_an_example():
  for spec in {s.partition(":")[0] for s, _ in RUNS}:
    with open(os.path.join(REPO, spec)) as f:
      doc = f.read().split('"""')[1]
    assert f"--config {spec}" in doc, spec
    assert spec == "configs/tiny.py" or "Arg" in doc, spec


# ------------------------------------------------------------------------- bad args

@pytest.mark.parametrize("spec,message", [
    ("configs/llama.py:size=2b", "size='2b' is not one of 125m, 410m, 1b, 6l_2048, 24l_2048, "
                                 "7b, 8l_4096, 128l_4096"),
    ("configs/llama.py", "size='' is not one of 125m"),
    ("configs/llama.py:size=tiny", "tiny: configs/tiny.py"),
    ("configs/llama.py:siz=1b", "unknown arg 'siz'; the args are size, batch"),
    ("configs/llama.py:1b", "unknown arg '1b'"),
    ("configs/grow.py:recipe=huge", "recipe='huge' is not one of tiny, gradual, paper, 7b, 28b"),
    ("configs/grow.py:recipe=tiny,layers=4", "unknown arg 'layers'; the args are recipe"),
    ("configs/repro/replica.py:run=both", "run='both' is not one of scratch, stack"),
    ("configs/repro/replica.py:run=scratch,method=zero", "args of run=stack only"),
    ("configs/repro/operators.py:width,random,small=600", "small='600' is not a number of "
                                                           "small-stage steps"),
    ("configs/repro/operators.py:width,random,small=x", "give 1 <= N < 600"),
    ("configs/repro/operators.py:width,random,small=3,msg", "optionally with ,msg and then "
                                                           ",small=N"),
])
def test_a_bad_arg_is_a_value_error_naming_it(spec, message):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bad_arg_cfg", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  with pytest.raises(ValueError) as e:
    module.get_config(arg or None)
  assert message in str(e.value) and path in str(e.value)


def test_a_bad_arg_through_the_cli_is_one_line_naming_it():
  with pytest.raises(cli.CommandError) as e:
    load("configs/llama.py:size=2b")
  assert "size='2b' is not one of 125m" in str(e.value)


# ------------------------------------------------------------------------- no clones

def test_no_block_of_six_lines_repeats_in_configs():
  """The issue's measure of cloned configs: six stripped non-blank lines seen twice."""
  seen, repeats = {}, []
  for path in sorted(glob.glob(os.path.join(REPO, "configs/**/*.py"), recursive=True)):
    with open(path) as f:
      lines = [line.strip() for line in f if line.strip()]
    for i in range(len(lines) - 5):
      where = f"{os.path.relpath(path, REPO)} line {i + 1} (non-blank)"
      block = tuple(lines[i:i + 6])
      if block in seen:
        repeats.append((seen[block], where, block[0]))
      seen.setdefault(block, where)
  assert not repeats


def test_operators_small_suffix_moves_growth_later_at_equal_flops():
  """`,small=N` changes the growth timing d of one operator, not its FLOPs."""
  module_spec = importlib.util.spec_from_file_location(
      "operators_cfg", os.path.join(REPO, "configs/repro/operators.py"))
  op = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(op)
  from growjax.model import ModelConfig  # noqa: PLC0415
  large = ModelConfig(**op.LARGE)
  seq = 256
  budget = op.SCRATCH_STEPS * large.flops_per_token(seq)
  for arg, small_steps in (("width,random,msg", 150), ("width,random,msg,small=300", 300),
                           ("depth,direct,small=50", 50)):
    c = op.get_config(arg)
    assert c.growth.small_steps == small_steps
    small = ModelConfig(**{k: c.growth.small_model[k] for k in op.LARGE})
    spent = (small_steps * small.flops_per_token(seq)
             + (c.train.steps - small_steps) * large.flops_per_token(seq))
    assert budget - large.flops_per_token(seq) < spent <= budget, arg


def test_set_field_casts_like_the_command_line_and_names_a_bad_assignment():
  """`config.set_field`, behind the benchmarks' `--set model.FIELD=VALUE`."""
  from growjax import config as config_lib
  cfg = config_lib.base_config("tiny")
  config_lib.set_field(cfg, "model.remat_prevent_cse=true")
  config_lib.set_field(cfg, "train.steps=7")
  config_lib.set_field(cfg, "model.fp8_swiglu_kernel=off")
  assert cfg.model.remat_prevent_cse is True and cfg.train.steps == 7
  assert cfg.model.fp8_swiglu_kernel == "off"
  for bad in ("model.remat_polcy=dots", "model.remat_policy", "nothing.steps=3"):
    with pytest.raises(ValueError, match="not FIELD=VALUE of a config field"):
      config_lib.set_field(cfg, bad)
