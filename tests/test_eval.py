"""`growjax eval` and the lm-evaluation-harness adapter on a tiny model trained in the
test on four sentences, so the multiple-choice answers are known (the choices it was
trained to complete); acc / acc_norm arithmetic on fixed scores; bad task files."""

import json
import math
import os
import sys

import numpy as np
import pytest

from growjax import cli
from growjax.interop import evaluate

FACTS = ["the cat sat on the mat.", "a bird flew over the tree.",
         "my dog ate the red apple.", "the sun rises in the east."]
TASK = [
    {"context": "the cat sat on the", "choices": [" tree.", " mat.", " apple."], "gold": 1},
    {"context": "a bird flew over the", "choices": [" tree.", " mat.", " east."], "gold": 0},
    {"context": "my dog ate the red", "choices": [" mat.", " apple."], "gold": 1},
    {"context": "the sun rises in the", "choices": [" west and sets.", " east."], "gold": 1},
]


def config_file(tmp) -> str:
  path = os.path.join(tmp, "cfg.py")
  with open(path, "w") as f:
    f.write(f'''
from growjax.config import base_config
def get_config(arg=None):
  c = base_config("tiny")
  c.model.dtype = "float32"
  c.model.num_layers, c.model.embed_dim, c.model.mlp_dim = 2, 64, 128
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 4, 2, 16
  c.data.name = "text_files"
  c.data.train_files = "{tmp}/train.txt"
  c.data.validation_files = "{tmp}/valid.txt"
  c.data.seq_len = 32
  c.train.steps, c.train.global_batch_size = 100, 16
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 50, 0, 2
  c.train.checkpoint_every = 100
  c.optimizer.peak_lr, c.optimizer.end_lr, c.optimizer.warmup_steps = 1e-2, 1e-3, 10
  c.metrics.tensorboard = False
  c.train.final_sample_tokens, c.train.final_sample_prompt = 20, "the cat"
  return c
''')
  return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  import random

  from growjax import train as train_lib
  from growjax.cli import parse
  tmp = str(tmp_path_factory.mktemp("eval"))
  r = random.Random(0)
  lines = [r.choice(FACTS) for _ in range(1500)]
  open(os.path.join(tmp, "train.txt"), "w").write("\n".join(lines))
  open(os.path.join(tmp, "valid.txt"), "w").write("\n".join(lines[:200]))
  with open(os.path.join(tmp, "task.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(t) for t in TASK) + "\n")
  cfg_path = config_file(tmp)
  cfg = parse(cli.COMMANDS["train"], [f"--config={cfg_path}"]).config
  printed = []
  import builtins
  real_print = builtins.print
  builtins.print = lambda *a, **k: (printed.append(" ".join(map(str, a))), real_print(*a, **k))
  try:
    history = train_lib.train(cfg, os.path.join(tmp, "run"))
  finally:
    builtins.print = real_print
  return tmp, cfg_path, history, "\n".join(printed)


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def test_training_ends_with_a_sample(trained):
  _, _, history, printed = trained
  assert "sample of the trained model (20 tokens, greedy" in printed
  assert "the cat sat on the mat." in printed


def test_eval_perplexity_and_multiple_choice(trained, monkeypatch, capsys):
  tmp, cfg_path, history, _ = trained
  out_json = os.path.join(tmp, "results.json")
  code, out, err = run(monkeypatch, capsys, "eval", f"--config={cfg_path}",
                       f"--checkpoint={tmp}/run", f"--tasks={tmp}/task.jsonl",
                       f"--out={out_json}", "--batch_size=4")
  assert code == 0, err
  assert "validation batches: 2/2" in err and "task.jsonl: choices scored: 10/10" in err
  results = json.load(open(out_json))
  v = results["validation"]
  assert v["batches"] == 2 and v["tokens"] == 2 * 16 * 32
  # The trainer's own eval step on the same windows: the same loss.
  last_eval = history["eval_loss"][max(history["eval_loss"])]
  assert abs(v["loss"] - last_eval) < 1e-5 and v["perplexity"] == pytest.approx(math.exp(v["loss"]))
  # Byte tokenizer: a target byte is a token (specials decode to no byte).
  assert 0 < v["bytes"] <= v["tokens"]
  assert v["bits_per_byte"] == pytest.approx(v["loss"] * v["tokens"] / math.log(2) / v["bytes"])
  task = results["tasks"][f"{tmp}/task.jsonl"]
  assert task["examples"] == 4 and task["acc"] == 1.0 and task["acc_norm"] == 1.0
  assert [p["pred"] for p in task["predictions"]] == [t["gold"] for t in TASK]
  assert "acc 1.0000 ± 0.0000  acc_norm 1.0000" in out


class Fixed:   # log-likelihoods given, per (context, continuation) pair in order
  def __init__(self, scores):
    self.scores = scores

  def loglikelihoods(self, pairs, progress=None):
    return [(s, False) for s in self.scores[:len(pairs)]]


class Chars:
  bos_id = -1

  def encode(self, text):
    return [ord(c) for c in text]


def test_acc_norm_divides_by_the_choice_characters_like_lm_eval():
  examples = [{"context": "q", "choices": [" a", " bbbbbbbbbb"], "gold": 1},
              {"context": "q", "choices": [" éééé", " eeeeee"], "gold": 1}]
  # Example 1: raw picks ' a' (-2 > -5); per character ' bbbbbbbbbb' (-5/11 > -2/2).
  # Example 2 (the issue's): per character -10/5 < -10.5/7 picks ' eeeeee'; per UTF-8
  # byte ' éééé' is 9 bytes, -10/9 > -10.5/7 picks ' éééé' (lm-eval's acc_bytes).
  r = evaluate.multiple_choice(Fixed([-2.0, -5.0, -10.0, -10.5]), Chars(), examples)
  assert [p["pred"] for p in r["predictions"]] == [0, 0]
  assert [p["pred_norm"] for p in r["predictions"]] == [1, 1]
  assert [p["pred_bytes"] for p in r["predictions"]] == [1, 0]
  assert r["acc"] == 0.0 and r["acc_norm"] == 1.0 and r["acc_bytes"] == 0.5


def test_encode_pair_moves_the_context_space_like_lm_eval():
  class Words:
    bos_id = 0

    def encode(self, text):
      return [len(w) + 1 for w in text.split(" ") if w] if text else []

  ctx, cont = evaluate.encode_pair(Words(), "the cat ", "sat")
  assert ctx == [0, 4, 4] and cont == [4]


WHITESPACE_CONTEXTS = ["The answer is", "The answer is ", "Question:  \n", "A\tB\t",
                       "line one\n\n", "x \t\n ", "   ", "end.\r\n"]


@pytest.mark.parametrize("spec", ["byte", "hf"])
def test_encode_pair_equals_lm_evals_own_split(spec):
  """lm-eval's `TemplateLM._encode_pair` (its causal branch) is the oracle: every
  trailing whitespace of the context moves, the continuation is taken by position."""
  pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e .[test])")
  from lm_eval.api.model import TemplateLM

  from growjax.interop import sample
  here = os.path.dirname(os.path.abspath(__file__))
  tok = sample.make_tokenizer(
      "byte" if spec == "byte"
      else f"hf:{here}/fixtures/hf/llama_mha_tied/tokenizer.json")

  class Harness:   # what `_encode_pair` reads of its model
    backend = "causal"

    def tok_encode(self, text, **unused):
      return [int(i) for i in tok.encode(text)]

  for context in WHITESPACE_CONTEXTS:
    for choice in [" Paris", "\tyes", "no", " é\n"]:
      want_ctx, want_cont = TemplateLM._encode_pair(Harness(), context, choice)
      ctx, cont = evaluate.encode_pair(tok, context, choice, bos=False)
      assert (ctx, cont) == (list(want_ctx), list(want_cont)), (context, choice)


@pytest.mark.parametrize("line, expect", [
    ('{"context": "a", "choices": [" b", " c"]}', "task.jsonl:2: needs the keys context, "
                                                 "choices, gold"),
    ('{"context": "a", "choices": [" b", " c"], "gold": 2}', "task.jsonl:2: gold=2 is not "
                                                            "an index into its 2 choices"),
    ("not json", "task.jsonl:2: not JSON"),
])
def test_bad_task_files_are_one_line(line, expect, tmp_path, monkeypatch, capsys):
  path = tmp_path / "task.jsonl"
  path.write_text(json.dumps(TASK[0]) + "\n" + line + "\n")
  code, _, err = run(monkeypatch, capsys, "eval", f"--config={config_file(str(tmp_path))}",
                     f"--checkpoint={tmp_path}/none", f"--tasks={path}")
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert err.startswith("growjax eval: ") and expect in err, err


def test_lm_eval_adapter_runs_a_local_task(trained, tmp_path, monkeypatch):
  lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install "
                                "-e .[test])")
  from lm_eval.api.instance import Instance
  from lm_eval.tasks import TaskManager

  from growjax.interop.lm_eval_adapter import GrowjaxLM
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
  tmp, _, _, _ = trained
  (tmp_path / "toy.yaml").write_text(f"""
task: growjax_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp}/task.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
""")
  # As lm-eval's command builds it: --model_args, plus its own --batch_size / device.
  lm = GrowjaxLM.create_from_arg_string(f"checkpoint={tmp}/run,batch_size=4",
                                        {"batch_size": 1, "device": None})
  assert lm.scorer.batch_size == 8   # 4 rounded up to the 8 data-parallel devices
  results = lm_eval.simple_evaluate(
      model=lm, tasks=["growjax_toy"],
      task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
  r = results["results"]["growjax_toy"]
  assert r["acc,none"] == 1.0 and r["acc_norm,none"] == 1.0
  # Contexts ending in spaces, newlines and tabs: lm-eval's harness (its requests, its
  # split through the adapter) and `growjax eval`'s scoring agree choice by choice.
  spaced = [{"context": "the cat sat on the ", "choices": ["mat.", "tree."], "gold": 0},
            {"context": "the sun rises in the  \n", "choices": ["east.", "west."], "gold": 0},
            {"context": "my dog ate the\t", "choices": ["red apple.", "mat."], "gold": 0}]
  with open(tmp_path / "spaced.jsonl", "w") as f:
    f.write("\n".join(json.dumps(t) for t in spaced) + "\n")
  (tmp_path / "spaced.yaml").write_text(
      (tmp_path / "toy.yaml").read_text().replace("growjax_toy", "growjax_spaced")
      .replace(f"{tmp}/task.jsonl", str(tmp_path / "spaced.jsonl")))
  results = lm_eval.simple_evaluate(
      model=lm, tasks=["growjax_spaced"], log_samples=True,
      task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
  harness = [[float(resp[0][0]) for resp in s["resps"]]
             for s in sorted(results["samples"]["growjax_spaced"], key=lambda s: s["doc_id"])]
  ours = evaluate.multiple_choice(lm.scorer, lm.tok, spaced)["predictions"]
  assert np.allclose(harness, [p["loglik"] for p in ours], rtol=0, atol=1e-4)
  [rolling] = lm.loglikelihood_rolling(
      [Instance("loglikelihood_rolling", {}, ("the cat sat on the mat.",), 0)])
  [(whole, _), (_, greedy)] = lm.loglikelihood(
      [Instance("loglikelihood", {}, ("", "the cat sat on the mat."), 0),
       Instance("loglikelihood", {}, ("the cat", " sat on the mat."), 1)])
  assert rolling == pytest.approx(whole, abs=1e-4) and greedy
  [text] = lm.generate_until(
      [Instance("generate_until", {}, ("the cat", {"until": ["."], "max_gen_toks": 16}), 0)])
  assert text == " sat on the mat"
