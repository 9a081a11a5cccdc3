"""Data: the embedded corpus prepared inline into the prepared format, local files,
tokenizers, and a deterministic, resumable, process-sharded pipeline."""

import json

import numpy as np
import pytest

from growjax import data
from growjax.data import reader
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
    assert set(x) == set(y) == set(data.BATCH_KEYS)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def windows(cfg, split):
  """Every window of a split of the (inline-prepared) dataset, in stored order."""
  ds = data.open_datasets(cfg)[0]
  src = ds.source(split)
  return np.stack([np.frombuffer(r, dtype=ds.index["dtype"]) for r in
                   src.__getitems__(range(len(src)))]).astype(np.int32)


def test_shakespeare_is_prepared_inline_split_by_play(data_dir):
  cfg = shakespeare()
  ds = data.open_datasets(cfg)[0]
  assert ds.path == data.inline_dir(cfg) and ds.path.startswith(data_dir)
  splits = ds.index["splits"]
  assert splits["train"]["documents"] == 34 and splits["validation"]["documents"] == 4
  assert ds.index["seq_len"] == 64 and ds.index["dtype"] == "uint16"
  assert ds.index["tokenizer"]["identity"] == "byte"
  # Another seq_len is another preparation; the same one is found again.
  assert data.inline_dir(shakespeare(32)) != ds.path == data.inline_dir(shakespeare())
  # The validation plays, whole: 4 BOS (one per play) in their windows.
  val = windows(cfg, "validation")
  assert np.sum(val[:, :-1] == ByteTokenizer().bos_id) == 4


def test_batches_are_shifted_packed_windows(data_dir):
  cfg = shakespeare(seq_len=64)
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  assert batch["inputs"].shape == (4, 64) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  train = windows(cfg, "train")
  tok = ByteTokenizer()
  # Documents are packed as BOS doc EOS, back to back; consecutive windows overlap by one.
  assert train[0, 0] == tok.bos_id
  np.testing.assert_array_equal(train[:-1, -1], train[1:, 0])
  stream = np.concatenate([train[:, :-1].ravel(), train[-1:, -1]])
  assert np.sum(stream == tok.bos_id) == 34 and np.sum(stream == tok.eos_id) in (33, 34)
  # Every batch row is one of the windows, with the contract's document arrays.
  as_rows = {w.tobytes(): i for i, w in enumerate(train)}
  for r in range(4):
    w = np.concatenate([batch["inputs"][r], batch["targets"][r, -1:]])
    assert w.tobytes() in as_rows
  expect = data.batch_from_windows(np.concatenate(
      [batch["inputs"], batch["targets"][:, -1:]], axis=1), tok.bos_id, tok.pad_id, tok.eos_id)
  assert_batches_equal([batch], [expect])


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
  assert state == {"windows_consumed": 32}
  resumed = data.train_iterator(cfg, global_batch_size=8, seed=0)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), straight[4:])
  legacy = data.train_iterator(cfg, global_batch_size=8, seed=0)
  legacy.set_state({"next_index": 4})  # checkpoints from before positions were in windows
  assert_batches_equal(take(legacy, 3), straight[4:])


def test_row_subsets_cut_the_same_global_batch(data_dir):
  cfg = shakespeare()
  whole = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3)
  for rows in ([0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6], list(range(8))):
    part = take(data.train_iterator(cfg, global_batch_size=8, seed=0, rows=np.array(rows)), 3)
    for step in range(3):
      for k in data.BATCH_KEYS:
        np.testing.assert_array_equal(part[step][k], whole[step][k][rows])


@pytest.mark.parametrize("small,large", [(8, 4), (4, 8), (6, 4)])
def test_position_in_windows_survives_a_batch_size_change(data_dir, small, large):
  """A grow run's handoff: the large stage, with another batch size, goes on with the
  next unseen window, so over one epoch every window is seen exactly once."""
  cfg = shakespeare(seq_len=512)
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
  val = windows(cfg, "validation")
  np.testing.assert_array_equal(a[0]["inputs"], val[:8, :-1])
  np.testing.assert_array_equal(a[1]["targets"], val[8:16, 1:])


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
  ds = data.open_datasets(cfg)[0]
  assert ds.index["splits"]["train"]["documents"] == 21  # 1 text file + 20 jsonl lines
  batch = next(data.train_iterator(cfg, global_batch_size=2))
  assert batch["inputs"].shape == (2, 16)


@pytest.mark.parametrize("field,value,match", [
    ("name", "c4", "config.data.name='c4'"),
    ("tokenizer", "spm:/no/such.model", "does not exist"),
    ("tokenizer", "gpt2", "config.data.tokenizer='gpt2'"),
    ("seq_len", 0, "config.data.seq_len"),
    ("mixture", "web:0.5", "config.data.mixture names 'web'.*add 'web=DIR'"),
    ("mixture", "web", "config.data.mixture entry 'web' is not NAME:WEIGHT"),
    ("datasets", "web", "config.data.datasets entry 'web' is not NAME=DIR"),
    ("datasets", "web=/d", "config.data.mixture is empty"),
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


def test_byte_tokenizer_round_trips_unicode():
  tok = ByteTokenizer()
  text = "Shall I compare thee — to a summer's day? ☀"
  ids = tok.encode(text)
  assert ids.min() >= 3 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text


def test_sentencepiece_trains_offline_and_loads(tmp_path, data_dir):
  corpus = tmp_path / "corpus.txt"
  val = windows(shakespeare(), "validation")
  corpus.write_text(ByteTokenizer().decode(val[:, :-1].ravel()[:200000]))
  path = data.train_sentencepiece(str(corpus), 400, str(tmp_path / "spm" / "m"))  # 259 + pieces
  tok = data.make_tokenizer(f"spm:{path}")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 400
  ids = tok.encode("To be, or not to be")
  assert tok.decode(ids) == "To be, or not to be"
