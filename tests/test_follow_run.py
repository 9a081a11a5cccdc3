"""A run a person can follow (issue 31), through the console entry point: the README's
grow recipe at toy size says where it writes, compiles, saves, a run-wide ETA and how
it ended (summary.json); sample, inspect and export-hf take the grow run's workdir
(its last stage with a checkpoint, said on stderr); files are written with the umask's
mode; `plan` flags a small stage longer than the config's run; `growjax tokenizer`
reports its reading. One toy grow run is shared by the module."""

import contextlib
import importlib.machinery
import io
import json
import os
import re
import stat
import subprocess
import sys
import types

import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import progress
from growjax.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROW = os.path.join(REPO, "configs", "grow.py")
TINY = os.path.join(REPO, "configs", "tiny.py")
# The README's `growjax train --config configs/grow.py:recipe=tiny --workdir runs/grow`,
# at toy size: 2 layers for 3 steps grown by G_stack to 4 layers trained to step 6.
TOY = ["--config.train.steps=6", "--config.growth.small_steps=3", "--config.model.num_layers=4",
       "--config.train.eval_every=3", "--config.train.log_every=1",
       "--config.train.checkpoint_every=3", "--config.train.eval_batches=1",
       "--config.data.seq_len=32", "--config.train.global_batch_size=8",
       "--config.optimizer.warmup_steps=1", "--config.metrics.tensorboard=False"]


def console(*args) -> tuple[int, str, str]:
  """`growjax ARGS` in this process: (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  saved = sys.argv
  sys.argv = ["growjax", *args]
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli.main()
  finally:
    sys.argv = saved
  return code, out.getvalue(), err.getvalue()


class FakeWandb(types.ModuleType):
  """The `wandb` calls growjax makes, recorded (CI has no wandb; a real offline run is
  `test_wandb_offline_writes_the_run_locally_and_sends_nothing`)."""

  def __init__(self):
    super().__init__("wandb")
    self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    self.runs = []

  def Settings(self, **kw):   # noqa: N802 - wandb's name
    return kw

  def init(self, **kw):
    run = types.SimpleNamespace(init=kw, logged=[], finished=False)
    run.log = lambda values, step: run.logged.append((step, values))
    run.finish = lambda: setattr(run, "finished", True)
    self.runs.append(run)
    return run


@pytest.fixture(scope="module")
def grow_run(tmp_path_factory, data_dir):
  """The toy grow recipe, logging to a fake W&B beside metrics.jsonl."""
  workdir = tmp_path_factory.mktemp("runs") / "grow"
  fake, saved = FakeWandb(), sys.modules.get("wandb")
  sys.modules["wandb"] = fake
  try:
    code, out, err = console("train", "--config", f"{GROW}:recipe=tiny", "--workdir",
                             str(workdir), *TOY, "--config.train.loggers=wandb")
  finally:
    sys.modules.pop("wandb")
    if saved is not None:
      sys.modules["wandb"] = saved
  assert code == 0, err
  return workdir, out, fake.runs


@pytest.mark.slow   # the module's one toy grow run, ~15 s on 2 cores
def test_a_grow_run_says_where_it_writes_what_it_does_and_how_it_ended(grow_run):
  workdir, out, _ = grow_run
  lines = out.splitlines()
  assert lines[0].startswith(f"workdir {workdir}: checkpoints, metrics.jsonl, growjax.log")
  assert lines.count("compiling the train step ...") == 2   # two stages
  assert len([x for x in lines if re.fullmatch(r"compiled the train step in \d+\.\ds", x)]) == 2
  saved = [int(m[1]) for line in lines
           if (m := re.fullmatch(r"checkpoint step (\d+) saved in \d+\.\ds, [\d.]+ MiB", line))]
  assert {3, 6} <= set(saved)
  # The small stage's ETA covers the whole run; the last stage's is the run's own.
  small_step = next(line for line in lines if line.startswith("step 3/3"))
  assert re.search(r"ETA \w+ \(this stage \w+\)$", small_step)
  assert re.search(r"\| ETA \w+$", next(line for line in lines if line.startswith("step 6/6")))

  summary = json.loads((workdir / "summary.json").read_text())
  large = workdir / "large" / "checkpoints"
  meta = ckpt_lib.read_meta(str(large), 6)
  records = [json.loads(x) for x in (workdir / "large" / "metrics.jsonl").read_text().splitlines()]
  small_meta = ckpt_lib.read_meta(str(workdir / "small" / "checkpoints"), 3)
  small = ModelConfig(**small_meta["model"]).flops_per_token(32)
  big = ModelConfig(**meta["model"]).flops_per_token(32)
  assert summary == {
      "workdir": str(workdir), "step": 6,
      "train_loss": records[-1]["loss"], "train_loss_step": 6,
      "eval_loss": records[-1]["eval_loss"], "eval_loss_step": 6,
      "tokens": 6 * 8 * 32, "wall_time_s": summary["wall_time_s"],
      "checkpoint": f"{large}/6", "flops": meta["flops_seen"],
      "stages": ["small/ 2 layers, steps 0..3", "large/ 4 layers, steps 3..6"],
      "scratch_flops": 6 * 8 * 32 * big,
      "flops_vs_scratch": meta["flops_seen"] / (6 * 8 * 32 * big)}
  assert meta["flops_seen"] == pytest.approx(3 * 8 * 32 * (small + big), rel=1e-9)
  block = out[out.index("== run finished"):].splitlines()
  assert block[0] == f"== run finished: {workdir}"
  assert block[1] == f"  final train loss  {records[-1]['loss']:.4f} (step 6)"
  assert block[5] == f"  checkpoint        {large}/6"
  assert f"= {summary['flops_vs_scratch']:.1%} of training the final model from scratch" in block[6]


@pytest.mark.slow
def test_sample_inspect_and_export_take_the_grow_runs_workdir(grow_run, tmp_path):
  workdir, _, _ = grow_run
  picked = (f"a grow run's workdir; using its last stage large/, step 6: "
            f"{workdir}/large/checkpoints/6")
  code, out, err = console("sample", "--checkpoint", str(workdir), "--prompt", "ROMEO",
                           "--max_new_tokens", "4")
  assert code == 0 and err.splitlines() == [f"--checkpoint={workdir}: {picked}"]
  assert out.splitlines()[0].startswith("ROMEO")
  code, out, err = console("inspect", str(workdir), "--json")
  assert code == 0 and err.splitlines() == [f"CKPT_DIR={workdir}: {picked}"]
  assert json.loads(out)["checkpoint"] == f"{workdir}/large/checkpoints/6"
  code, out, err = console("grow", "--from", str(workdir), "--to", str(tmp_path / "g8"),
                           "--config", f"{GROW}:recipe=tiny", "--g", "2")
  assert code == 0 and err.splitlines() == [f"--from={workdir}: {picked}"]
  assert ckpt_lib.read_meta(str(tmp_path / "g8"), 6)["model"]["num_layers"] == 8
  # Files written with the umask's mode: the exported model is 0644 under umask 022.
  old = os.umask(0o022)
  try:
    code, out, err = console("export-hf", "--from", str(workdir), "--to", str(tmp_path / "hf"))
  finally:
    os.umask(old)
  assert code == 0, err
  assert stat.S_IMODE(os.stat(tmp_path / "hf" / "model.safetensors").st_mode) == 0o644


@pytest.mark.slow
def test_a_grow_run_midway_resolves_to_its_newest_stage_and_an_empty_one_names_them(
    grow_run, tmp_path):
  workdir, _, _ = grow_run
  midway = tmp_path / "midway"
  (midway / "large").mkdir(parents=True)
  os.symlink(workdir / "small", midway / "small")
  code, out, err = console("inspect", str(midway))
  assert code == 0
  assert err.splitlines() == [
      f"CKPT_DIR={midway}: a grow run's workdir; using its last stage small/, step 3 "
      f"(large/ holds none yet): {midway}/small/checkpoints/3"]
  empty = tmp_path / "empty"
  for name in ("stage_0", "grown_1", "stage_1"):
    (empty / name).mkdir(parents=True)
  code, out, err = console("inspect", str(empty))
  assert code == 2
  assert err.splitlines() == [
      f"growjax inspect: CKPT_DIR={str(empty)!r} is a grow run's workdir, but none of its "
      f"stages (stage_0/, grown_1/, stage_1/) holds a complete checkpoint yet — let the run "
      f"save one (config.train.checkpoint_every) or give a step dir such as "
      f"{empty}/stage_1/checkpoints/<step>"]
  code, out, err = console("sample", "--checkpoint", str(tmp_path), "--prompt", "x")
  assert code == 2 and err.strip().endswith(
      "— give a run's workdir once it has saved (config.train.checkpoint_every), its "
      "checkpoints dir or one step's dir")


def test_prepared_shards_and_index_have_the_umasks_mode(tmp_path, data_dir):
  text = tmp_path / "train.txt"
  text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
  old = os.umask(0o022)
  try:
    code, out, err = console("prepare-data", "--config", TINY, "--out", str(tmp_path / "p"),
                             "--workers", "1", "--config.data.name=text_files",
                             f"--config.data.train_files={text}",
                             f"--config.data.validation_files={text}",
                             "--config.data.seq_len=32")
  finally:
    os.umask(old)
  assert code == 0, err
  written = [f for f in os.listdir(tmp_path / "p") if not f.startswith(".")]
  assert "index.json" in written and any(f.endswith(".array_record") for f in written)
  assert {f: stat.S_IMODE(os.stat(tmp_path / "p" / f).st_mode) for f in written} == {
      f: 0o644 for f in written}


def test_plan_flags_a_small_stage_longer_than_the_configs_run():
  code, out, err = console("plan", "--params", "1.1e9", "--tokens", "2.5e10", "--config",
                           f"{GROW}:recipe=tiny")
  assert code == 0
  assert out.splitlines()[-1] == (
      "warning: the small stage (9567072 steps) is not shorter than this config's whole "
      "run (config.train.steps=300, 6.144e+05 tokens): the budget above is not this "
      "config's — drop --flops/--tokens to plan for the config's own budget, or raise "
      "config.train.steps above 9567072")
  code, out, err = console("plan", "--params", "1.1e9", "--tokens", "2e10")
  assert code == 2 and "is 1.07 times the whole budget's" in err


def test_tokenizer_reports_its_reading_and_training(tmp_path):
  corpus = tmp_path / "c.jsonl"
  corpus.write_text("".join(json.dumps({"text": f"line {i} of a tiny corpus"}) + "\n"
                            for i in range(50)))
  code, out, err = console("tokenizer", "--input", str(corpus), "--vocab_size", "300",
                           "--kind", "hf_bpe", "--model_prefix", str(tmp_path / "tok"))
  assert code == 0, err
  lines = out.splitlines()
  size = sum(len(f"line {i} of a tiny corpus") for i in range(50))
  assert re.fullmatch(r"tokenizer hf_bpe \(300 tokens\): read 50 documents \(0\.0 MB\) in "
                      r"\d+\.\ds; training \.\.\.", lines[0])
  assert re.fullmatch(r"tokenizer hf_bpe \(300 tokens\): done in \d+\.\ds, 50 documents "
                      r"\(0\.0 MB\) read", lines[1])
  assert size < 5e4   # 0.0 MB as printed


def test_progress_ticks_while_a_library_reads_then_trains():
  import threading
  lines, release = [], threading.Event()
  with progress.Reading("work", lines.append, every_s=0.01) as reading:
    docs = reading.count(iter(["ab", "cde"]))
    next(docs)
    while not any("reading, 1 documents" in line for line in lines):
      release.wait(0.005)
    list(docs)
    while not any("training on 2 documents" in line for line in lines):
      release.wait(0.005)
  assert reading.documents == 2 and reading.bytes == 5
  assert lines[-1].startswith("work: done in ") and lines[-1].endswith(
      "2 documents (0.0 MB) read")


@pytest.mark.slow
def test_wandb_logs_each_stage_as_its_run_with_metrics_jsonls_values(grow_run):
  workdir, _, runs = grow_run
  assert [r.init["name"] for r in runs] == ["grow/small", "grow/large"]
  for run, stage in zip(runs, ("small", "large")):
    records = [json.loads(x) for x in (workdir / stage / "metrics.jsonl").read_text().splitlines()]
    assert run.init["id"] == (workdir / stage / "wandb_run_id").read_text().strip()
    assert (run.init["project"], run.init["resume"], run.init["dir"]) == (
        "growjax", "allow", str(workdir / stage))
    assert run.init["settings"] == {"console": "off"}
    assert run.init["config"]["train"]["loggers"] == "wandb"
    assert [(step, v["loss"]) for step, v in run.logged] == [(r["step"], r["loss"])
                                                            for r in records]
    assert all(None not in v.values() for _, v in run.logged) and run.finished
  assert not (workdir / "small" / "tb").exists()   # loggers=wandb: no TensorBoard


def test_an_unknown_logger_or_a_missing_wandb_is_refused_before_compute(tmp_path, monkeypatch):
  code, out, err = console("train", "--config", TINY, "--workdir", str(tmp_path / "r"),
                           "--config.train.loggers=tensorboard,mlflow")
  assert code == 2 and err.splitlines()[-1] == (
      "growjax train: config.train.loggers='tensorboard,mlflow': unknown logger 'mlflow' — "
      "choose from tensorboard, wandb (comma-separated), or '' for metrics.jsonl alone")
  monkeypatch.setitem(sys.modules, "wandb", None)   # find_spec: not importable
  import importlib.util
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  code, out, err = console("train", "--config", TINY, "--workdir", str(tmp_path / "r"),
                           "--config.train.loggers=wandb")
  assert code == 2 and err.splitlines()[-1] == (
      "growjax train: config.train.loggers='wandb' names wandb, but the wandb package is not "
      "installed — pip install 'growjax[wandb]', or drop wandb from config.train.loggers")


def test_wandb_offline_writes_the_run_locally_and_sends_nothing(tmp_path, data_dir):
  """The real package (the `wandb` extra), where installed: WANDB_MODE=offline, and a
  W&B server address nothing listens on."""
  pytest.importorskip("wandb")
  env = dict(os.environ, WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9",
             WANDB_SILENT="true", PYTHONPATH=os.pathsep.join(sys.path))
  run = subprocess.run(
      [sys.executable, "-m", "growjax", "train", "--config", TINY, "--workdir",
       str(tmp_path / "r"), "--config.train.steps=2", "--config.train.log_every=1",
       "--config.data.seq_len=32", "--config.train.global_batch_size=8",
       "--config.train.final_sample_tokens=0", "--config.train.loggers=wandb"],
      env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  run_id = (tmp_path / "r" / "wandb_run_id").read_text().strip()
  [record] = (tmp_path / "r" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
  assert b"loss" in record.read_bytes()


@pytest.mark.slow
def test_eval_on_the_workdir_scores_converted_winogrande_by_its_own_contexts(grow_run, tmp_path):
  """README's eval line on the grow run's workdir, its task from `growjax convert-mc`: a
  Winogrande example scores each option's context against the shared rest of the
  sentence, as two single-context examples would."""
  workdir, _, _ = grow_run
  rows = tmp_path / "wino.jsonl"
  rows.write_text(json.dumps({"sentence": "The cat sat on the _ all day.", "option1": "mat",
                              "option2": "roof", "answer": "1"}) + "\n")
  code, out, err = console("convert-mc", "--input", str(rows), "--out", str(tmp_path / "w.jsonl"))
  assert code == 0, err
  single = tmp_path / "single.jsonl"
  single.write_text("".join(json.dumps({"context": f"The cat sat on the {o}",
                                        "choices": [" all day.", " x"], "gold": 0}) + "\n"
                            for o in ("mat", "roof")))
  code, out, err = console("eval", "--config", TINY, "--checkpoint", str(workdir), "--tasks",
                           f"{tmp_path / 'w.jsonl'},{single}", "--out", str(tmp_path / "r.json"),
                           "--config.data.seq_len=32")
  assert code == 0, err
  assert out.splitlines()[0] == (
      "perplexity on the embedded Shakespeare plays (config.data.name='shakespeare'), "
      "prepared inline on first use: 4 batches of 32 tokens, tokenizer byte "
      "(--batches=-1 skips it)")
  tasks = json.loads((tmp_path / "r.json").read_text())["tasks"]
  [wino] = tasks[str(tmp_path / "w.jsonl")]["predictions"]
  by_context = [p["loglik"][0] for p in tasks[str(single)]["predictions"]]
  assert wino["loglik"] == pytest.approx(by_context, abs=1e-4)
