"""The grain pipeline: shuffled (and mixed) window ids -> the rows a process holds -> batches.

Order of operations, the same on every process:

  per dataset k: window ids 0..W_k-1 --shuffle(seed_k), reshuffled every epoch--> forever
  --mix the datasets by their weights (grain's deterministic interleave)--> (k, id) pairs
  --skip the pairs already consumed--> batch(global_batch_size)
  --keep the rows this process's devices hold--> read those windows --> pack

Only window *ids* are shuffled, mixed and batched globally (grain's index shuffle: no
list of ids in memory), so a process reads from the shards just the records of the rows
its devices hold (`sharding.process_rows`: read off the batch sharding, so a row
replicated over a `tensor` axis that spans processes is read by each of them), and the
global batch at step s is the same whatever the process count or mesh. The position is
counted in *sequences* of the mixed stream, not batches, so a run whose batch size or
process count changes (a grow run's small and large stages) goes on with the next unseen
sequence, and a mixture resumes at the same point of its interleave.

A source is anything random-access over one split's windows (`len`, `__getitem__`, and
`__getitems__` for a batch read; records as bytes of `dtype` or as arrays), e.g.
`growjax.data.shards.open_shards`. This module does not open files or parse configs;
`growjax.data.loader` does.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import time
from typing import Any, Iterator, Sequence

import grain
from absl import flags
import numpy as np

from growjax.data import packing

_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
_SEED_STRIDE = 7919  # dataset k of a mixture is shuffled with seed + k * stride


@dataclasses.dataclass(frozen=True)
class Special:
  """The token ids packing needs (shared by every dataset of a mixture)."""
  bos_id: int
  eos_id: int | None = None
  pad_id: int | None = None


def check_rows(rows: np.ndarray, global_batch_size: int) -> np.ndarray:
  rows = np.asarray(rows, dtype=np.int64)
  if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= global_batch_size)):
    raise ValueError(f"rows {rows} are not row indices of a global batch of "
                     f"{global_batch_size}.")
  return rows


def read_windows(source: Any, ids: np.ndarray, seq_len: int, dtype: np.dtype) -> np.ndarray:
  """Records `ids` of `source` as an int32 (len(ids), seq_len + 1) array."""
  ids = [int(i) for i in ids]
  out = np.empty((len(ids), seq_len + 1), dtype=np.int32)
  if not ids:
    return out
  getitems = getattr(source, "__getitems__", None)
  records = getitems(ids) if getitems is not None else [source[i] for i in ids]
  for j, record in enumerate(records):
    window = (np.frombuffer(record, dtype=dtype) if isinstance(record, (bytes, bytearray))
              else np.asarray(record))
    if window.shape != (seq_len + 1,):
      raise ValueError(f"record {ids[j]} holds {window.size} tokens, not seq_len + 1 = "
                       f"{seq_len + 1}; the prepared dataset does not match its index.json "
                       f"— prepare it again.")
    out[j] = window
  return out


def _tagged(k: int):
  return lambda i: (np.int64(k), np.int64(i))


def mixed_ids(lengths: Sequence[int], weights: Sequence[float], seed: int | None
              ) -> grain.MapDataset:
  """The infinite stream of `(dataset, window id)` pairs.

  `seed=None`: each dataset in stored order, cycled (the fixed eval set). Otherwise each
  dataset's ids are shuffled by its seed and reshuffled every epoch. With several
  datasets grain's `mix` interleaves them deterministically: in the first K pairs
  dataset k appears round(K * w_k) times, give or take one, for every K."""
  parts = []
  for k, n in enumerate(lengths):
    ids = grain.MapDataset.range(n)
    if seed is not None:
      ids = ids.shuffle(seed=seed + k * _SEED_STRIDE)
    parts.append(ids.repeat(None).map(_tagged(k)))
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.mix(parts, integer_proportions(weights))


def integer_proportions(weights: Sequence[float]) -> list[int]:
  """Weights as the smallest integers in the same ratios (0.7, 0.2, 0.1 -> 7, 2, 1), so
  the interleave is exact: grain truncates float proportions (0.7 / 0.1 * 100 may become
  699), skewing the realised weights."""
  fracs = [fractions.Fraction(float(w)).limit_denominator(10**6) for w in weights]
  denom = math.lcm(*(f.denominator for f in fracs))
  ints = [int(f * denom) for f in fracs]
  g = math.gcd(*ints)
  return [i // g for i in ints]


class _Gather:
  """Batch of `(dataset, id)` pairs -> this process's rows, read and packed."""

  def __init__(self, sources, rows, seq_len, dtype, special: Special):
    self.sources, self.rows, self.seq_len = list(sources), rows, seq_len
    self.dtype, self.special = np.dtype(dtype), special

  def __call__(self, batch) -> dict[str, np.ndarray]:
    k_B, id_B = batch
    k_R, id_R = np.asarray(k_B)[self.rows], np.asarray(id_B)[self.rows]
    windows_RxL1 = np.empty((len(self.rows), self.seq_len + 1), dtype=np.int32)
    for k in np.unique(k_R):
      sel = k_R == k
      windows_RxL1[sel] = read_windows(self.sources[int(k)], id_R[sel], self.seq_len,
                                       self.dtype)
    s = self.special
    return packing.batch_from_windows(windows_RxL1, s.bos_id, s.pad_id, s.eos_id)


class WindowIterator:
  """Infinite iterator of batch dicts (`packing.BATCH_KEYS`, each (len(rows), seq_len)
  int32) over one or several sources mixed by `weights`.

  Its state is `{'windows_consumed': N}`: the count of sequences of the mixed stream
  consumed so far. JSON-able, and independent of the batch size, the process count and
  the rows, so any of them may change on resume.
  """

  def __init__(self, sources: Sequence[Any], seq_len: int, global_batch_size: int,
               rows: np.ndarray, seed: int, *, dtype="uint16", special: Special,
               weights: Sequence[float] | None = None, num_workers: int = 0,
               names: Sequence[str] | None = None):
    self._batch = global_batch_size
    rows = check_rows(rows, global_batch_size)
    self._workers = num_workers
    names = list(names or [f"dataset {k}" for k in range(len(sources))])
    weights = list(weights or [1.0] * len(sources))
    for name, source in zip(names, sources):
      if len(source) == 0:
        raise ValueError(f"{name}: the training split holds no window of "
                         f"config.data.seq_len={seq_len} — prepare more text.")
    if len(sources) == 1 and len(sources[0]) < global_batch_size:
      raise ValueError(
          f"{names[0]}: the training split holds {len(sources[0])} windows of "
          f"config.data.seq_len={seq_len}, fewer than config.train.global_batch_size="
          f"{global_batch_size} — use more text or smaller sizes.")
    self._ids = mixed_ids([len(s) for s in sources], weights, seed)
    self._gather = _Gather(sources, rows, seq_len, dtype, special)
    self._start(0)

  def _start(self, windows_consumed: int) -> None:
    ds = self._ids[windows_consumed:].batch(self._batch, drop_remainder=True)
    ds = ds.map(self._gather).to_iter_dataset(_READ)
    if self._workers > 0:
      if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (defaults here)
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._it, self._consumed = iter(ds), windows_consumed
    # Read the first batch now: a missing or damaged shard is an error when the data is
    # opened (before the trainer computes anything), not at the first step.
    self._first = next(self._it)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out, self._first = (self._first, None) if self._first is not None else (
        next(self._it), None)
    self._consumed += self._batch
    return out

  def get_state(self) -> dict:
    return {"windows_consumed": int(self._consumed)}

  def set_state(self, state: dict) -> None:
    """Continues after `state['windows_consumed']` sequences. Also reads the batch
    counter of checkpoints written before positions were kept in windows."""
    if "windows_consumed" in state:
      self._start(int(state["windows_consumed"]))
    elif "next_index" in state:
      self._start(int(state["next_index"]) * self._batch)
    else:
      raise ValueError(f"unknown data-iterator state {state!r}.")


def eval_batches(sources: Sequence[Any], seq_len: int, global_batch_size: int,
                 rows: np.ndarray, num_batches: int, *, dtype="uint16", special: Special,
                 weights: Sequence[float] | None = None) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` global batches of the validation windows, unshuffled (each
  dataset in stored order, mixed by `weights`), cut to `rows`: a fixed held-out set.

  A split too small for that many batches is cycled (the held-out set then repeats
  windows; it is still the same fixed set at every evaluation)."""
  rows = check_rows(rows, global_batch_size)
  ids = mixed_ids([len(s) for s in sources], weights or [1.0] * len(sources), None)
  gather = _Gather(sources, rows, seq_len, dtype, special)
  out = []
  for b in range(num_batches):
    pairs = [ids[i] for i in range(b * global_batch_size, (b + 1) * global_batch_size)]
    out.append(gather((np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))))
  return out


def tokens_per_second(it: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
  """Loader throughput alone: tokens (inputs) produced per second over `num_batches`."""
  next(it)  # first batch pays for start-up
  start, tokens = time.perf_counter(), 0
  for _ in range(num_batches):
    tokens += next(it)["inputs"].size
  return tokens / (time.perf_counter() - start)
