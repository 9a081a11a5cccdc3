"""The checkpoint knows its tokenizer: `prepare-data`, `import-hf` and `train` record it
(spec, files, special ids, max length) and eval, sample, the end-of-run sample and
`export-hf` use it, even after the files it was made from are gone; a run starting
from a checkpoint with another tokenizer is refused before compute."""

import json
import math
import os
import random
import shutil
import sys

import numpy as np
import pytest

from growjax import cli

REPO = os.path.join(os.path.dirname(__file__), "..")
HF_CONFIG = os.path.join(REPO, "configs", "hf.py")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama_mha_tied")
WORDS = "to be or not the darling buds of may shall i compare thee summer day".split()


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def corpus(tmp) -> tuple[str, str]:
  r = random.Random(0)
  lines = [" ".join(r.choice(WORDS) for _ in range(12)) + "." for _ in range(300)]
  train, valid = os.path.join(tmp, "train.txt"), os.path.join(tmp, "valid.txt")
  with open(train, "w") as f:
    f.write("\n".join(lines))
  with open(valid, "w") as f:
    f.write("\n".join(lines[:60]))
  return train, valid


def test_import_train_export_keeps_the_tokenizer(tmp_path, monkeypatch, capsys, caplog,
                                                 data_dir):
  src, ck, work = tmp_path / "src", str(tmp_path / "ck"), str(tmp_path / "run")
  shutil.copytree(FIXTURE, src)
  code, out, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}")
  assert code == 0, err
  # A float32 model imported with the default --dtype: said, not silent.
  assert ("weights float32 kept as float32, compute dtype recorded bfloat16 (--dtype; "
          "--dtype=float32 computes as the source)") in out
  train, valid = corpus(str(tmp_path))
  code, out, err = run(
      monkeypatch, capsys, "train", f"--config={HF_CONFIG}:checkpoint={ck},seq=16,batch=8",
      f"--config.train.init_from={ck}", f"--workdir={work}", "--config.train.steps=2",
      "--config.train.eval_every=0", "--config.train.eval_batches=1",
      "--config.train.checkpoint_every=2", "--config.data.name=text_files",
      f"--config.data.train_files={train}", f"--config.data.validation_files={valid}",
      "--config.metrics.tensorboard=False")
  assert code == 0, err
  kept = os.path.join(work, "checkpoints", "tokenizer")
  assert sorted(os.listdir(kept)) == ["tokenizer.json", "tokenizer_config.json"]
  for checkpoint in (ck, work):   # inspect reads imported and trained steps quietly
    code, out, err = run(monkeypatch, capsys, "inspect", checkpoint)
    assert code == 0 and "Metadata file does not exist" not in out + err + caplog.text
  # The import moves away: the trained checkpoint still carries what export needs.
  shutil.move(ck, tmp_path / "moved")
  code, out, err = run(monkeypatch, capsys, "export-hf", f"--from={work}",
                       f"--to={tmp_path / 'out'}")
  assert code == 0, err
  exported = tmp_path / "out"
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (exported / name).read_bytes() == (src / name).read_bytes()
  config = json.loads((exported / "config.json").read_text())
  source = json.loads((src / "config.json").read_text())
  for key in ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings"):
    assert config[key] == source[key], key          # 0, 1, None, 64
  # Through the import's own config when it is there (a checkpoint moved back).
  shutil.move(tmp_path / "moved", ck)
  code, _, err = run(monkeypatch, capsys, "export-hf", f"--from={work}",
                     f"--to={tmp_path / 'out2'}")
  assert code == 0, err
  config = json.loads((tmp_path / "out2" / "config.json").read_text())
  assert config["rope_parameters"] == source["rope_parameters"]
  assert config["max_position_embeddings"] == 64 and config["bos_token_id"] == 0
  try:   # not a CI dependency: checked where it is installed
    import transformers
  except ImportError:
    return
  tok = transformers.AutoTokenizer.from_pretrained(str(exported))
  assert tok.bos_token_id == 0 and tok.eos_token_id == 1


def test_bring_your_own_corpus_trains_evaluates_and_samples_with_its_tokenizer(
    tmp_path, monkeypatch, capsys, data_dir):
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  shutil.copy(os.path.join(FIXTURE, "tokenizer.json"), tok_dir)   # no tokenizer_config
  train, valid = corpus(str(tmp_path))
  cfg = tmp_path / "cfg.py"
  cfg.write_text(f'''
from growjax.config import base_config
def get_config(arg=None):
  c = base_config("tiny")
  c.model.dtype = "float32"
  c.model.vocab_size, c.model.num_layers, c.model.embed_dim, c.model.mlp_dim = 320, 1, 32, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 2, 16
  c.data.seq_len = 32
  c.data.prepared_dir = "{tmp_path}/prep"
  c.train.steps, c.train.global_batch_size = 20, 8
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 20, 0, 2
  c.train.checkpoint_every = 20
  c.optimizer.peak_lr, c.optimizer.warmup_steps = 1e-2, 2
  c.metrics.tensorboard = False
  c.train.final_sample_tokens, c.train.final_sample_prompt = 8, "to be"
  return c
''')
  # The README's bring-your-own-corpus: prepare with a tokenizer, train and evaluate
  # with config.data.tokenizer left at its default.
  code, _, err = run(monkeypatch, capsys, "prepare-data", f"--config={cfg}", "--workers=1",
                     "--config.data.name=text_files", f"--config.data.train_files={train}",
                     f"--config.data.validation_files={valid}",
                     f"--config.data.tokenizer=hf:{tok_dir}/tokenizer.json")
  assert code == 0, err
  shutil.rmtree(tok_dir)   # the prepared data carries its tokenizer
  work = str(tmp_path / "run")
  code, out, err = run(monkeypatch, capsys, "train", f"--config={cfg}", f"--workdir={work}")
  assert code == 0, err
  sample = (out + err).split("sample of the trained model")[1].split(":\n", 1)[1]
  assert sample.startswith("to be") and len(sample.strip()) > len("to be")

  results = tmp_path / "eval.json"
  code, out, err = run(monkeypatch, capsys, "eval", f"--config={cfg}",
                       f"--checkpoint={work}", f"--out={results}")
  assert code == 0, err
  v = json.loads(results.read_text())["validation"]
  # Direct: growjax's model on the same windows, bytes decoded by `tokenizers` itself.
  import jax
  import tokenizers

  from growjax import data as data_lib
  from growjax.interop import params_io
  from growjax.model import Transformer
  parsed = cli.parse(cli.COMMANDS["train"], [f"--config={cfg}"]).config
  loaded = params_io.load(work)
  hf_tok = tokenizers.Tokenizer.from_file(f"{tmp_path}/prep/tokenizer/tokenizer.json")
  nats = n_bytes = 0.0
  for b in data_lib.eval_batches(parsed.data, global_batch_size=8, num_batches=2):
    logits = np.asarray(Transformer(loaded.model_cfg.for_inference().replace(
        dtype="float32")).apply({"params": jax.device_get(loaded.params)}, b["inputs"],
                                segment_ids=b.get("segment_ids"),
                                positions=b.get("positions")), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    tok_logp = np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
    mask = np.asarray(b["loss_mask"]).astype(bool)
    nats -= tok_logp[mask].sum()
    n_bytes += sum(len(hf_tok.decode([int(i) for i in t[m]],
                                     skip_special_tokens=True).encode())
                   for t, m in zip(b["targets"], mask))
  assert v["bytes"] == n_bytes
  assert v["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, abs=1e-3)
  assert 0.5 < v["bits_per_byte"] < 8

  code, out, err = run(monkeypatch, capsys, "sample", f"--checkpoint={work}",
                       "--prompt=to be", "--max_new_tokens=8")
  assert code == 0, err
  assert out.startswith("to be") and len(out.split("\n---")[0]) > len("to be")
  assert f"tokenizer hf:{work}/checkpoints/tokenizer/tokenizer.json" in out

  # Export of a run whose tokenizer is a bare tokenizer.json: a tokenizer_config.json
  # made for it, the ids and the trained length in config.json.
  code, _, err = run(monkeypatch, capsys, "export-hf", f"--from={work}",
                     f"--to={tmp_path / 'hf'}")
  assert code == 0, err
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 1, None)
  assert config["max_position_embeddings"] == 32
  assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text()) == {
      "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32,
      "bos_token": "<s>", "eos_token": "</s>"}
  try:   # not a CI dependency: checked where it is installed
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (tok.bos_token_id, tok.eos_token_id, tok.model_max_length) == (0, 1, 32)
  except ImportError:
    pass

  # Training on from it with data of another tokenizer: refused, one line, no compute.
  code, _, err = run(monkeypatch, capsys, "train", f"--config={cfg}",
                     f"--workdir={tmp_path / 'again'}", f"--config.train.init_from={work}",
                     "--config.data.prepared_dir=", "--config.data.name=text_files",
                     f"--config.data.train_files={train}",
                     f"--config.data.validation_files={valid}")
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert err.startswith("growjax train: the data (config.data.name='text_files' "
                        "(config.data.tokenizer)) is tokenized by 'byte' (identity byte), "
                        f"but config.train.init_from='{work}' was trained with 'hf:"), err
  assert not [n for n in os.listdir(tmp_path / "again" / "checkpoints") if n.isdigit()]
