"""The grain pipeline: shuffled windows of a cached token stream, one process's rows.

Order of operations, the same on every process:

  window ids 0..W-1 --shuffle(seed), reshuffled every epoch--> repeat forever
  --batch(global_batch_size)--> keep rows [p*B/P, (p+1)*B/P) --> gather windows

Only window *ids* are batched globally, so a process reads just its own rows'
tokens, and the global batch at step s is the same whatever the process count
(a 2-process run sees exactly the batches of a 1-process run). The iterator is
grain's, so `get_state()` / `set_state()` give an exact, JSON-able position.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import grain
import numpy as np

from growjax.data import stream as stream_lib


@dataclasses.dataclass(frozen=True)
class RowSlice:
  """Rows of a global batch that one process loads."""
  process_index: int
  process_count: int
  global_batch_size: int

  def __post_init__(self):
    if self.global_batch_size % self.process_count:
      raise ValueError(
          f"config.train.global_batch_size={self.global_batch_size} must divide evenly over "
          f"{self.process_count} processes.")

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  def of(self, ids: np.ndarray) -> np.ndarray:
    start = self.process_index * self.local_batch_size
    return ids[start:start + self.local_batch_size]


def train_dataset(stream: np.ndarray, seq_len: int, rows: RowSlice, seed: int
                  ) -> grain.MapDataset:
  """Infinite, per-epoch reshuffled batches of this process's rows."""
  n = stream_lib.num_windows(stream, seq_len)
  if n < rows.global_batch_size:
    raise ValueError(
        f"the training split holds {n} windows of config.data.seq_len={seq_len}, fewer than "
        f"config.train.global_batch_size={rows.global_batch_size}; use more text or smaller "
        f"sizes.")
  ids = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
  return ids.batch(rows.global_batch_size, drop_remainder=True).map(
      lambda batch_ids: stream_lib.gather_windows(stream, rows.of(batch_ids), seq_len))


def train_iterator(stream: np.ndarray, seq_len: int, rows: RowSlice, seed: int,
                   num_workers: int = 0) -> grain.DatasetIterator:
  """A resumable iterator of `{'inputs', 'targets'}` int32 (local_batch, seq_len).

  `num_workers > 0` moves the gathering into grain worker processes; the
  iterator state stays exact either way.
  """
  ds = train_dataset(stream, seq_len, rows, seed).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(ds)


def eval_batches(stream: np.ndarray, seq_len: int, rows: RowSlice, num_batches: int
                 ) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of windows, in stored order (fixed held-out set).

  A split too small for that many batches is cycled (the held-out set then
  repeats windows; it is still the same fixed set at every evaluation).
  """
  n = stream_lib.num_windows(stream, seq_len)
  if n == 0:
    raise ValueError(
        f"the validation split is shorter than one window of config.data.seq_len={seq_len}.")
  out = []
  for b in range(num_batches):
    ids = np.arange(b * rows.global_batch_size, (b + 1) * rows.global_batch_size) % n
    out.append(stream_lib.gather_windows(stream, rows.of(ids), seq_len))
  return out


def tokens_per_second(it: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
  """Loader throughput alone: tokens (inputs) produced per second over `num_batches`."""
  next(it)  # first batch pays for start-up
  start, tokens = time.perf_counter(), 0
  for _ in range(num_batches):
    tokens += next(it)["inputs"].size
  return tokens / (time.perf_counter() - start)
