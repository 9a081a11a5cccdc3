"""Mixtures of prepared datasets: realised proportions equal the weights, sampling is
deterministic and resumable (state a count, independent of batch size and process count),
eval mixes the validation splits, and datasets that cannot be mixed are refused."""

import json

import numpy as np
import pytest

from growjax import data
from prepared_data import tagged_docs, write_prepared

SEQ = 16
TAGS = {"web": 10, "code": 20, "books": 30}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  out = {}
  for i, (name, tag) in enumerate(TAGS.items()):
    d = str(tmp_path_factory.mktemp(name))
    # Different sizes (each cycles its own epochs): 400, 200, 100 docs of 17 tokens. (Not
    # fewer: grain's index shuffle costs ~1 ms a window on splits of ~10 windows.)
    write_prepared(d, {"train": tagged_docs(tag, 400 >> i, 15),
                       "validation": tagged_docs(tag, 8, 15, seed=1)}, SEQ, shard_windows=70)
    out[name] = d
  return out


def mixture_cfg(dirs, mixture="web:0.7,code:0.2,books:0.1"):
  c = data.default_data_config()
  c.seq_len = SEQ
  c.datasets = ",".join(f"{n}={d}" for n, d in dirs.items())
  c.mixture = mixture
  return c


def which(batch):
  """Dataset name of each row, read off its tokens (every token but BOS/EOS is tag or
  tag + 1)."""
  body = np.where(batch["inputs"] > 2, batch["inputs"], 0).max(axis=1)
  names = {t: n for n, t in TAGS.items()}
  return [names[int(v) - (int(v) % 10)] for v in body]


def test_realised_weights_equal_the_configured_ones(dirs):
  cfg = mixture_cfg(dirs)
  it = data.train_iterator(cfg, global_batch_size=100, seed=0)
  counts = {n: 0 for n in TAGS}
  for _ in range(100):                       # 10,000 sequences
    for n in which(next(it)):
      counts[n] += 1
  assert counts == {"web": 7000, "code": 2000, "books": 1000}


def test_every_prefix_is_within_one_sequence_of_its_weight(dirs):
  it = data.train_iterator(mixture_cfg(dirs, "web:3,code:1"), global_batch_size=1, seed=0)
  names = [which(next(it))[0] for _ in range(400)]
  web = np.cumsum([n == "web" for n in names])
  assert np.all(np.abs(web - 0.75 * np.arange(1, 401)) <= 1)


def test_mixture_is_deterministic_and_resumes_across_batch_size_and_processes(dirs):
  cfg = mixture_cfg(dirs)
  straight = np.concatenate([b["inputs"] for b in
                             [next(it) for it in [data.train_iterator(
                                 cfg, global_batch_size=1, seed=4)] for _ in range(80)]])
  first = data.train_iterator(cfg, global_batch_size=8, seed=4)
  seen = [next(first)["inputs"] for _ in range(5)]
  state = json.loads(json.dumps(first.get_state()))
  assert state == {"windows_consumed": 40}
  # Resumed with another batch size, as two processes holding half the rows each.
  parts = []
  for rows in (np.arange(0, 4), np.arange(4, 8)):
    it = data.train_iterator(cfg, global_batch_size=8, seed=4, rows=rows)
    it.set_state(state)
    parts.append([next(it)["inputs"] for _ in range(5)])
  resumed = [np.concatenate([a, b]) for a, b in zip(*parts)]
  np.testing.assert_array_equal(np.concatenate(seen + resumed), straight)
  again = data.train_iterator(cfg, global_batch_size=1, seed=4)
  np.testing.assert_array_equal(next(again)["inputs"], straight[:1])
  other = data.train_iterator(cfg, global_batch_size=80, seed=5)
  assert not np.array_equal(next(other)["inputs"], straight)


def test_eval_mixes_every_validation_split_or_the_named_one(dirs):
  cfg = mixture_cfg(dirs)
  batches = data.eval_batches(cfg, global_batch_size=10, num_batches=2)
  assert sorted(which(batches[0]) + which(batches[1])) == sorted(
      ["web"] * 14 + ["code"] * 4 + ["books"] * 2)
  cfg.eval_dataset = "code"
  assert set(which(data.eval_batches(cfg, global_batch_size=10, num_batches=1)[0])) == {
      "code"}
  cfg.eval_dataset = "news"
  with pytest.raises(ValueError, match="config.data.eval_dataset='news' is not in "
                                       "config.data.mixture"):
    data.check_data_config(cfg)


def test_datasets_that_cannot_be_mixed_are_named(dirs, tmp_path):
  other_tok = str(tmp_path / "other_tok")
  write_prepared(other_tok, {"train": tagged_docs(10, 5, 15)}, SEQ, identity="spm-1234")
  cfg = mixture_cfg({**dirs, "books": other_tok})
  with pytest.raises(ValueError, match=r"dataset 'books' \(.*other_tok\) was tokenized by "
                                       r"'spm-1234' but dataset 'web' .* by 'byte' — a "
                                       r"mixture needs one tokenizer: prepare 'books' again"):
    data.open_datasets(cfg)
  other_len = str(tmp_path / "other_len")
  write_prepared(other_len, {"train": tagged_docs(10, 5, 15)}, 8)
  cfg = mixture_cfg({**dirs, "code": other_len})
  with pytest.raises(ValueError, match=r"config.data.datasets\['code'\]=.*other_len' was "
                                       r"prepared with seq_len=8"):
    data.open_datasets(cfg)
  cfg = mixture_cfg(dirs)
  cfg.prepared_dir = dirs["web"]
  with pytest.raises(ValueError, match="prepared_dir and config.data.mixture are both set"):
    data.check_data_config(cfg)
