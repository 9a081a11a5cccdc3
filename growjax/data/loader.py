"""A config's split -> its cached token stream -> the train iterator and the fixed eval set."""

from __future__ import annotations

import os

import numpy as np

from growjax.data import pipeline
from growjax.data import sources
from growjax.data import stream as stream_lib
from growjax.data.tokenizers import make_tokenizer


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
