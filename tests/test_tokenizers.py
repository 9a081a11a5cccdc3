"""Tokenizers from local files: a Hugging Face tokenizer.json (trained here with the
`tokenizers` library), a tiktoken rank file (written here), byte and SentencePiece: ids,
BOS/EOS/pad, batch encoding, content identity, errors naming the file; `growjax
tokenizer` trains on the text field of .jsonl / parquet, not on raw JSON lines; a
preparation with an HF tokenizer round-trips the documents."""

import base64
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from growjax import cli
from growjax.data import config as data_config
from growjax.data import prepare, shards
from growjax.data import tokenizers as T

TEXTS = [f"the quick brown fox {i} jumps over the lazy dog; a stitch in time saves nine"
         for i in range(300)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  T.train_hf_bpe(iter(TEXTS), 320, str(d))
  return d


def test_hf_tokenizer_json(hf_dir, tmp_path):
  tok = T.make_tokenizer(f"hf:{hf_dir}")   # the folder or the file: the same tokenizer
  assert tok.identity == T.make_tokenizer(f"hf:{hf_dir}/tokenizer.json").identity
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (320, 1, 2, 0)
  text = "the lazy fox jumps"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and len(ids) < len(text) and tok.decode(ids) == text
  batch = tok.encode_batch([text, "a stitch", ""])
  np.testing.assert_array_equal(batch[0], ids)
  assert len(batch[2]) == 0
  # Special-token text in a document stays text: no document boundary packing did not make.
  assert tok.bos_id not in tok.encode("<s> the </s>").tolist()
  # Without tokenizer_config.json the specials are found by name; identity is content.
  (tmp_path / "plain").mkdir()
  (tmp_path / "plain" / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
  plain = T.make_tokenizer(f"hf:{tmp_path}/plain")
  assert (plain.bos_id, plain.eos_id, plain.pad_id) == (1, 2, 0)
  assert plain.identity == tok.identity
  # A file that does not parse.
  (tmp_path / "bad.json").write_text('{"model": {"type": "BPE", "vocab": [')
  with pytest.raises(ValueError, match=f"{tmp_path}/bad.json is not a valid Hugging Face "
                                       f"tokenizer.json .* — use the tokenizer.json"):
    T.make_tokenizer(f"hf:{tmp_path}/bad.json")
  with pytest.raises(ValueError, match="does not exist"):
    T.make_tokenizer(f"hf:{tmp_path}/missing")


def test_hf_tokenizer_with_only_an_end_of_text_token(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(tmp_path / "tokenizer.json"))
  t = T.make_tokenizer(f"hf:{tmp_path}")
  assert (t.bos_id, t.eos_id, t.pad_id) == (0, 0, -1)   # GPT-2 style: one separator
  tok2 = Tokenizer(models.BPE())
  tok2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok2.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=280, show_progress=False))
  (tmp_path / "none").mkdir()
  tok2.save(str(tmp_path / "none" / "tokenizer.json"))
  with pytest.raises(ValueError, match="has neither a BOS nor an EOS token .* packing needs"):
    T.make_tokenizer(f"hf:{tmp_path}/none")


def _tiktoken_file(path):
  ranks = {bytes([b]): b for b in range(256)}
  for i, merge in enumerate([b"th", b"he", b"the", b" t", b" the", b"ox"]):
    ranks[merge] = 256 + i
  with open(path, "w") as f:
    for piece, rank in ranks.items():
      f.write(f"{base64.b64encode(piece).decode()} {rank}\n")


def test_tiktoken_from_a_local_file(tmp_path):
  _tiktoken_file(tmp_path / "cl100k_base.tiktoken")
  tok = T.make_tokenizer(f"tiktoken:{tmp_path}/cl100k_base.tiktoken")  # name from the stem
  # cl100k_base's special tokens as tiktoken defines them: <|endoftext|> = 100257.
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (100257, 100257, -1)
  assert tok.vocab_size == 100277
  ids = tok.encode("the fox the")
  assert ids.tolist() == [258, 32, 102, 261, 260] and tok.decode(ids) == "the fox the"
  assert tok.encode("<|endoftext|>").tolist() != [100257]   # special text stays text
  assert [a.tolist() for a in tok.encode_batch(["the", "ox"])] == [[258], [261]]
  llama = T.make_tokenizer(f"tiktoken:{tmp_path}/cl100k_base.tiktoken@llama3")
  assert (llama.vocab_size, llama.bos_id, llama.eos_id) == (262 + 256, 262, 263)
  assert llama.identity != tok.identity
  with pytest.raises(ValueError, match="tiktoken encoding 'mine' is not known"):
    T.make_tokenizer(f"tiktoken:{tmp_path}/cl100k_base.tiktoken@mine")
  (tmp_path / "r50k_base.tiktoken").write_text("not base64 at all\n")
  with pytest.raises(ValueError, match="is not a tiktoken rank file"):
    T.make_tokenizer(f"tiktoken:{tmp_path}/r50k_base.tiktoken")


def test_spec_errors_name_the_forms():
  with pytest.raises(ValueError, match="'hf:/path/tokenizer.json' or 'tiktoken:"):
    T.make_tokenizer("gpt2")


def _run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  return code, capsys.readouterr()


def test_growjax_tokenizer_trains_on_the_text_field(tmp_path, monkeypatch, capsys):
  with open(tmp_path / "a.jsonl", "w") as f:
    for t in TEXTS[:200]:
      f.write(json.dumps({"id": 7, "text": t, "meta": {"source": "web"}}) + "\n")
  pq.write_table(pa.table({"body": TEXTS[200:]}), tmp_path / "b.parquet")
  code, out = _run(monkeypatch, capsys, "tokenizer", "--input", f"{tmp_path}/*",
                   "--text_key", "body", "--vocab_size", "300", "--kind", "hf_bpe",
                   "--model_prefix", str(tmp_path / "tok"))
  assert code == 2 and f"{tmp_path}/a.jsonl:1 has no field config.data.text_key='body'" in (
      out.err)
  (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n"
                                            for t in TEXTS[:200]))
  code, out = _run(monkeypatch, capsys, "tokenizer", "--input", f"{tmp_path}/*",
                   "--text_key", "body", "--vocab_size", "300", "--kind", "hf_bpe",
                   "--model_prefix", str(tmp_path / "tok"))
  assert code == 0, out.err
  vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
  assert not [p for p in vocab if len(p) > 1 and ('"' in p or "body" in p or "{" in p)]
  code, out = _run(monkeypatch, capsys, "tokenizer", "--input", f"{tmp_path}/*.jsonl",
                   "--text_key", "body", "--vocab_size", "300", "--model_prefix",
                   str(tmp_path / "spm"))
  assert code == 0, out.err
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  assert not [p for p in pieces if '"' in p or "body" in p]


def test_prepare_with_an_hf_tokenizer_round_trips(hf_dir, tmp_path):
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                  for t in TEXTS[:50]))
  cfg = data_config.default_data_config()
  cfg.name, cfg.train_files, cfg.seq_len = "text_files", f"{tmp_path}/c/*.jsonl", 16
  cfg.tokenizer = f"hf:{hf_dir}"
  with pytest.raises(ValueError, match="has 320 tokens, more than config.model.vocab_size=300"):
    prepare.prepare(cfg, str(tmp_path / "x"), vocab_size=300, log=lambda _: None)
  assert not (tmp_path / "x").exists()
  index = prepare.prepare(cfg, str(tmp_path / "out"), vocab_size=320, shard_windows=20,
                          log=lambda _: None)
  tok = T.make_tokenizer(cfg.tokenizer)
  assert index["tokenizer"]["identity"] == tok.identity and index["dtype"] == "uint16"
  src = shards.open_shards(str(tmp_path / "out"), "train")
  ws = [np.frombuffer(src[g], np.uint16) for g in range(len(src))]
  stream = np.concatenate([ws[0]] + [w[1:] for w in ws[1:]]).astype(np.int64)
  want = np.concatenate([np.concatenate([[1], tok.encode(t), [2]]) for t in TEXTS[:50]])
  np.testing.assert_array_equal(stream, want[:len(stream)])
  assert len(want) - len(stream) < 16
