"""Data: the embedded corpus, local files, tokenizers, and a deterministic, resumable,
process-sharded pipeline."""

import json
import os

import numpy as np
import pytest

from growjax import data
from growjax.data import sources
from growjax.data import stream as stream_lib
from growjax.data.tokenizers import ByteTokenizer


def shakespeare(seq_len=64):
  c = data.default_data_config()
  c.seq_len = seq_len
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    np.testing.assert_array_equal(x["targets"], y["targets"])


def test_shakespeare_is_split_by_play(data_dir):
  builder = sources.get_builder(shakespeare())
  titles = {s: [r["title"].decode() for r in builder.as_data_source(split=s)]
            for s in ("train", "validation")}
  assert len(titles["train"]) == 34 and len(titles["validation"]) == 4
  assert not set(titles["train"]) & set(titles["validation"])
  val_titles = " ".join(titles["validation"]).lower()
  assert all(w in val_titles for w in ("caesar", "much ado", "richard", "tempest"))


def test_batches_are_shifted_packed_windows(data_dir):
  cfg = shakespeare(seq_len=64)
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  assert batch["inputs"].shape == (4, 64) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  stream = data.token_stream(cfg, "train")
  tok = ByteTokenizer()
  # Documents are packed as BOS doc EOS, back to back.
  assert stream[0] == tok.bos_id
  assert np.sum(stream == tok.bos_id) == 34 == np.sum(stream == tok.eos_id)


def test_pipeline_is_deterministic_and_seed_dependent(data_dir):
  cfg = shakespeare()
  a = take(data.train_iterator(cfg, global_batch_size=8, seed=3), 5)
  b = take(data.train_iterator(cfg, global_batch_size=8, seed=3), 5)
  c = take(data.train_iterator(cfg, global_batch_size=8, seed=4), 5)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


def test_resume_from_state_continues_at_the_same_batch(data_dir):
  cfg = shakespeare()
  straight = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 7)
  it = data.train_iterator(cfg, global_batch_size=8, seed=0)
  take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
  resumed = data.train_iterator(cfg, global_batch_size=8, seed=0)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), straight[4:])


def test_row_subsets_cut_the_same_global_batch(data_dir):
  cfg = shakespeare()
  whole = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3)
  for rows in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6], list(range(8))):
    part = take(data.train_iterator(cfg, global_batch_size=8, seed=0, rows=np.array(rows)), 3)
    for step in range(3):
      np.testing.assert_array_equal(part[step]["inputs"], whole[step]["inputs"][rows])


@pytest.mark.parametrize("small,large", [(8, 4), (4, 8), (6, 4)])
def test_position_in_windows_survives_a_batch_size_change(data_dir, small, large):
  """A grow run's handoff: the large stage, with another batch size, goes on with the
  next unseen window, so over one epoch every window is seen exactly once."""
  cfg = shakespeare()
  cfg.seq_len = 512
  it = data.train_iterator(cfg, global_batch_size=small, seed=0)
  first = take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  assert state == {"windows_consumed": 5 * small}
  after = data.train_iterator(cfg, global_batch_size=large, seed=0)
  after.set_state(state)
  straight = np.concatenate([b["inputs"] for b in take(
      data.train_iterator(cfg, global_batch_size=1, seed=0), 5 * small + 3 * large)])
  seen = np.concatenate([b["inputs"] for b in first + take(after, 3)])
  np.testing.assert_array_equal(seen, straight)


def test_epochs_cover_every_window_and_reshuffle(tmp_path, data_dir):
  doc = tmp_path / "doc.txt"
  letters = np.random.default_rng(0).integers(97, 123, 100, dtype=np.uint8)
  doc.write_text(bytes(letters).decode())  # 100 bytes + BOS/EOS = 102 tokens: 12 windows of 8
  cfg = data.default_data_config()
  cfg.name, cfg.train_files, cfg.validation_files, cfg.seq_len = "text_files", str(doc), str(
      doc), 8
  it = data.train_iterator(cfg, global_batch_size=4, seed=0)
  epoch1 = np.concatenate([next(it)["inputs"] for _ in range(3)])
  epoch2 = np.concatenate([next(it)["inputs"] for _ in range(3)])
  key = lambda rows: sorted(map(bytes, rows.astype(np.uint8)))
  assert key(epoch1) == key(epoch2) and len(set(key(epoch1))) == 12
  assert not np.array_equal(epoch1, epoch2)


def test_eval_batches_are_fixed_validation_windows(data_dir):
  cfg = shakespeare()
  a = data.eval_batches(cfg, global_batch_size=8, num_batches=2)
  b = data.eval_batches(cfg, global_batch_size=8, num_batches=2)
  assert_batches_equal(a, b)
  val = data.token_stream(cfg, "validation")
  np.testing.assert_array_equal(a[0]["inputs"][0], val[:64])


def test_text_files_and_jsonl(tmp_path, data_dir):
  (tmp_path / "a.txt").write_text("hello world " * 50)
  with open(tmp_path / "b.jsonl", "w") as f:
    for i in range(20):
      f.write(json.dumps({"body": f"document {i} " * 10}) + "\n")
  cfg = data.default_data_config()
  cfg.name, cfg.text_key, cfg.seq_len = "text_files", "body", 16
  cfg.train_files = f"{tmp_path}/*.txt,{tmp_path}/*.jsonl"
  cfg.validation_files = str(tmp_path / "a.txt")
  data.check_data_config(cfg)
  stream = data.token_stream(cfg, "train")
  assert np.sum(stream == ByteTokenizer().bos_id) == 21  # 1 text file + 20 jsonl lines
  assert next(data.train_iterator(cfg, global_batch_size=2))["inputs"].shape == (2, 16)


@pytest.mark.parametrize("field,value,match", [
    ("name", "c4", "config.data.name='c4'"),
    ("tokenizer", "spm:/no/such.model", "does not exist"),
    ("tokenizer", "gpt2", "config.data.tokenizer='gpt2'"),
    ("seq_len", 0, "config.data.seq_len"),
])
def test_bad_data_config_is_named(field, value, match):
  cfg = data.default_data_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    data.check_data_config(cfg)


def test_missing_data_files_fail_before_compute(tmp_path):
  cfg = data.default_data_config()
  cfg.name, cfg.train_files = "text_files", str(tmp_path / "nothing-*.txt")
  cfg.validation_files = cfg.train_files
  with pytest.raises(ValueError, match="config.data.train_files=.*matches no file"):
    data.check_data_config(cfg)


def test_stream_cache_is_written_atomically(tmp_path):
  path = str(tmp_path / "s" / "x.byte.npy")
  n = stream_lib.write_stream(path, ["ab", "c"], ByteTokenizer())
  assert n == 7 and sorted(os.listdir(tmp_path / "s")) == ["x.byte.npy"]
  np.testing.assert_array_equal(stream_lib.load_stream(path), [1, 100, 101, 2, 1, 102, 2])


def test_byte_tokenizer_round_trips_unicode():
  tok = ByteTokenizer()
  text = "Shall I compare thee — to a summer's day? ☀"
  ids = tok.encode(text)
  assert ids.min() >= 3 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text


def test_sentencepiece_trains_offline_and_loads(tmp_path, data_dir):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(ByteTokenizer().decode(data.token_stream(shakespeare(), "validation")[:200000]))
  path = data.train_sentencepiece(str(corpus), 400, str(tmp_path / "spm" / "m"))  # 259 + pieces
  tok = data.make_tokenizer(f"spm:{path}")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 400
  ids = tok.encode("To be, or not to be")
  assert tok.decode(ids) == "To be, or not to be"
