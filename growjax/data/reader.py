"""Opening a prepared dataset for reading: its index.json, checked, and a random-access
source over one split's windows that opens each ArrayRecord shard only when a window of
it is first read.

Start-up reads index.json and nothing else: no shard is listed, opened or scanned, so it
costs the same for 1 MB and 1 TB. A global window id maps to (shard, record) by the
cumulative `windows` of the index's shard list. Shards are read by ArrayRecord's own
reader, which reads local paths and gs:// (through its built-in GCS client: Application
Default Credentials; `CLOUD_STORAGE_EMULATOR_ENDPOINT` points it at an emulator). A shard
that is missing, damaged or holds another count of windows than the index says is a
ValueError naming the file and the fix, raised when it is first read.

The format is docs of `growjax.data.shards` (written by `growjax prepare-data`); this
module only reads it, and does not batch (see `growjax.data.pipeline`).
"""

from __future__ import annotations

import bisect
import json
from typing import Any, Sequence

import numpy as np
from etils import epath

FORMAT = "growjax-prepared/1"
INDEX = "index.json"
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # random access


def _fix() -> str:
  return (f"prepare it with `growjax prepare-data` (a preparation killed before its end "
          f"writes no index.json: rerun the same command to finish it)")


def load_index(directory: str, field: str = "config.data.prepared_dir") -> dict:
  """The index.json of a prepared dataset, checked for the fields reading needs."""
  path = epath.Path(directory) / INDEX
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise ValueError(f"{field}={directory!r} has no {INDEX} ({path} is missing) — "
                     f"{_fix()}.") from None
  except Exception as e:  # noqa: BLE001 - gs:// errors come in several types
    raise ValueError(f"{field}={directory!r}: {path} cannot be read ({e}) — check the path "
                     f"and its permissions.") from None
  try:
    index = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}) — it is damaged: delete it and "
                     f"rerun `growjax prepare-data`.") from None
  if not isinstance(index, dict) or index.get("format") != FORMAT:
    raise ValueError(f"{path} is not a growjax prepared-dataset index (format "
                     f"{index.get('format') if isinstance(index, dict) else None!r}, "
                     f"expected {FORMAT!r}) — point {field} at a `growjax prepare-data` "
                     f"output.")
  for key in ("seq_len", "dtype", "tokenizer", "splits"):
    if key not in index:
      raise ValueError(f"{path} has no {key!r} field — it was not written by this version "
                       f"of `growjax prepare-data` — prepare the dataset again.")
  if index["dtype"] not in ("uint16", "int32"):
    raise ValueError(f"{path}: dtype {index['dtype']!r} is not 'uint16' or 'int32' — "
                     f"prepare the dataset again.")
  return index


class ShardSource:
  """Random access over the windows of one split of a prepared dataset.

  `source[g]` / `source.__getitems__(ids)` return records (raw bytes of the index's
  dtype, `seq_len + 1` tokens each). Pickles without its open readers (grain workers
  open their own)."""

  def __init__(self, directory: str, shards: Sequence[dict], seq_len: int, dtype: str):
    self.directory, self.seq_len, self.dtype = str(directory), int(seq_len), np.dtype(dtype)
    self.files = [str(s["file"]) for s in shards]
    self.windows = [int(s["windows"]) for s in shards]
    self._ends = list(np.cumsum(self.windows, dtype=np.int64).tolist())
    self._readers: list[Any] = [None] * len(self.files)

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_readers"] = [None] * len(self.files)
    return state

  def path(self, shard: int) -> str:
    return str(epath.Path(self.directory) / self.files[shard])

  def locate(self, g: int) -> tuple[int, int]:
    """Global window id -> (shard, record within it)."""
    if not 0 <= g < len(self):
      raise IndexError(f"window {g} is outside 0..{len(self) - 1}.")
    shard = bisect.bisect_right(self._ends, g)
    return shard, g - (self._ends[shard - 1] if shard else 0)

  def _damaged(self, shard: int, what: str) -> ValueError:
    return ValueError(
        f"prepared shard {self.path(shard)} {what} — delete it and rerun `growjax "
        f"prepare-data` with the same config (only missing shards are written again).")

  def _reader(self, shard: int):
    reader = self._readers[shard]
    if reader is None:
      from array_record.python import array_record_module  # noqa: PLC0415
      path = self.path(shard)
      try:
        reader = array_record_module.ArrayRecordReader(path, _READER_OPTIONS)
        if not reader.ok():
          raise RuntimeError("the reader could not open it")
        n = reader.num_records()
      except Exception as e:  # noqa: BLE001 - the C++ reader raises RuntimeError/OSError
        if not epath.Path(path).exists():
          raise ValueError(f"prepared shard {path} is missing (listed in "
                           f"{INDEX}) — rerun `growjax prepare-data` with the same config "
                           f"to write it.") from None
        raise self._damaged(shard, f"is not a readable ArrayRecord file ({e})") from None
      if n != self.windows[shard]:
        reader.close()
        raise self._damaged(shard, f"holds {n} records where {INDEX} lists "
                                   f"{self.windows[shard]}")
      self._readers[shard] = reader
    return reader

  def __getitems__(self, ids: Sequence[int]) -> list[bytes]:
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for j, g in enumerate(ids):
      shard, record = self.locate(int(g))
      by_shard.setdefault(shard, []).append((record, j))
    out: list[bytes] = [b""] * len(ids)
    for shard, wanted in by_shard.items():
      reader = self._reader(shard)
      try:
        records = reader.read([r for r, _ in wanted])
      except Exception as e:  # noqa: BLE001
        raise self._damaged(shard, f"cannot be read ({e})") from None
      for (_, j), record in zip(wanted, records):
        if len(record) != (self.seq_len + 1) * self.dtype.itemsize:
          raise self._damaged(shard, f"holds a record of {len(record)} bytes, not "
                                     f"seq_len + 1 = {self.seq_len + 1} {self.dtype} tokens")
        out[j] = record
    return out

  def __getitem__(self, g: int) -> bytes:
    return self.__getitems__([g])[0]


def open_split(directory: str, index: dict, split: str) -> ShardSource:
  """The windows of `split` ('train' | 'validation'); no file is opened here."""
  info = index["splits"].get(split) or {"shards": []}
  return ShardSource(directory, info.get("shards", []), index["seq_len"], index["dtype"])
