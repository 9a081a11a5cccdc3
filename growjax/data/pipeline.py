"""The grain pipeline: shuffled windows of a cached token stream, the rows a process holds.

Order of operations, the same on every process:

  window ids 0..W-1 --shuffle(seed), reshuffled every epoch--> repeat forever
  --skip the windows already consumed--> batch(global_batch_size)
  --keep the rows this process's devices hold--> gather windows

Only window *ids* are batched globally, so a process reads just the tokens of
the rows its devices hold (`sharding.process_rows`: read off the batch
sharding, so a row replicated over a `tensor` axis that spans processes is
loaded by each of them), and the global batch at step s is the same whatever
the process count or mesh. The position is counted in *windows*, not batches,
so a run whose batch size changes (a grow run's small and large stages) goes on
with the next unseen window.
"""

from __future__ import annotations

import time
from typing import Iterator

import grain
import numpy as np

from growjax.data import stream as stream_lib

_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _check_rows(rows: np.ndarray, global_batch_size: int) -> np.ndarray:
  rows = np.asarray(rows, dtype=np.int64)
  if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= global_batch_size)):
    raise ValueError(f"rows {rows} are not row indices of a global batch of "
                     f"{global_batch_size}.")
  return rows


class WindowIterator:
  """Infinite iterator of `{'inputs', 'targets'}` (len(rows), seq_len) int32 batches.

  Its state is `{'windows_consumed': N}`: JSON-able, and independent of the batch
  size, the process count and the rows, so any of them may change on resume.
  """

  def __init__(self, stream: np.ndarray, seq_len: int, global_batch_size: int,
               rows: np.ndarray, seed: int, num_workers: int = 0):
    self._stream, self._seq_len, self._seed = stream, seq_len, seed
    self._batch = global_batch_size
    self._rows = _check_rows(rows, global_batch_size)
    self._workers = num_workers
    n = stream_lib.num_windows(stream, seq_len)
    if n < global_batch_size:
      raise ValueError(
          f"the training split holds {n} windows of config.data.seq_len={seq_len}, fewer "
          f"than config.train.global_batch_size={global_batch_size}; use more text or "
          f"smaller sizes.")
    self._ids = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    self._start(0)

  def _start(self, windows_consumed: int) -> None:
    stream, rows, seq_len = self._stream, self._rows, self._seq_len
    ds = self._ids[windows_consumed:].batch(self._batch, drop_remainder=True).map(
        lambda batch_ids: stream_lib.gather_windows(stream, batch_ids[rows], seq_len))
    ds = ds.to_iter_dataset(_READ)
    if self._workers > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._it, self._consumed = iter(ds), windows_consumed

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out = next(self._it)
    self._consumed += self._batch
    return out

  def get_state(self) -> dict:
    return {"windows_consumed": int(self._consumed)}

  def set_state(self, state: dict) -> None:
    """Continues after `state['windows_consumed']` windows. Also reads the batch
    counter of checkpoints written before positions were kept in windows."""
    if "windows_consumed" in state:
      self._start(int(state["windows_consumed"]))
    elif "next_index" in state:
      self._start(int(state["next_index"]) * self._batch)
    else:
      raise ValueError(f"unknown data-iterator state {state!r}.")


def eval_batches(stream: np.ndarray, seq_len: int, global_batch_size: int, rows: np.ndarray,
                 num_batches: int) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of windows, in stored order (fixed held-out
  set), cut to `rows`.

  A split too small for that many batches is cycled (the held-out set then
  repeats windows; it is still the same fixed set at every evaluation).
  """
  rows = _check_rows(rows, global_batch_size)
  n = stream_lib.num_windows(stream, seq_len)
  if n == 0:
    raise ValueError(
        f"the validation split is shorter than one window of config.data.seq_len={seq_len}.")
  out = []
  for b in range(num_batches):
    ids = np.arange(b * global_batch_size, (b + 1) * global_batch_size) % n
    out.append(stream_lib.gather_windows(stream, ids[rows], seq_len))
  return out


def tokens_per_second(it: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
  """Loader throughput alone: tokens (inputs) produced per second over `num_batches`."""
  next(it)  # first batch pays for start-up
  start, tokens = time.perf_counter(), 0
  for _ in range(num_batches):
    tokens += next(it)["inputs"].size
  return tokens / (time.perf_counter() - start)
