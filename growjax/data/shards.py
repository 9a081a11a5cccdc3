"""The prepared-dataset format: shard names, the index.json schema, and atomic writing.

A prepared dataset is a directory (local or gs://, always through `etils.epath`):

- `<split>-<NNNNN>.array_record` shards (split 'train' | 'validation'); one record is one
  packed window of `seq_len + 1` tokens, raw little-endian `uint16` (vocab <= 65,536) or
  `int32`. Window i of a split is stream[i*seq_len : i*seq_len + seq_len + 1] of the
  split's packed stream `BOS doc EOS BOS doc EOS ...` (consecutive windows overlap by one
  token: inputs = w[:-1], targets = w[1:]); the partial last window is dropped.
- `index.json`, written last: the format tag, seq_len, dtype, the tokenizer (spec,
  identity, vocab size, bos/eos/pad ids), the sources (path, bytes, sha256), the text
  key, and per split its windows/tokens/documents and its shard list (file, windows,
  tokens, documents, bytes, sha256). Reading needs index.json only.

Each shard is written under a temporary name and renamed into place when complete (on
gs://, where there is no rename, it is uploaded straight to its name: a GCS object
appears only when its upload completes), so a present shard file is a complete one.

This module writes and checks the format; `growjax.data.reader` reads windows (its
`ShardSource` opens shards lazily, local or gs:// through ArrayRecord's built-in GCS
client), `growjax.data.prepare` decides what goes into each shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Iterable

import numpy as np
from etils import epath

from growjax import filemode
from growjax.data import reader
from growjax.data.reader import FORMAT, INDEX  # one definition of the format tag

# group_size:1 -> every record its own chunk: grain's random access reads one record
# without decoding its neighbours. zstd level 1: the size of the default level 3 on token
# windows (a third of raw for byte tokens) written 1.6x faster (127M against 80M tokens/s
# on one core, 2048-token windows); deterministic, so shards are byte-identical.
WRITER_OPTIONS = "group_size:1,zstd:1"
SPLITS = ("train", "validation")

__all__ = ["FORMAT", "INDEX", "SPLITS", "window_dtype", "shard_name", "ShardWriter",
           "write_shard", "write_json", "read_index", "check_shards", "verify_shards", "open_shards",
           "is_gcs"]


def is_gcs(path) -> bool:
  return os.fspath(path).startswith("gs://")


def window_dtype(vocab_size: int) -> np.dtype:
  """uint16 while every id fits (vocab <= 65,536), else int32."""
  return np.dtype(np.uint16 if int(vocab_size) <= 65536 else np.int32)


def shard_name(split: str, i: int) -> str:
  return f"{split}-{i:05d}.array_record"


def _host() -> str:
  return socket.gethostname().replace(".", "_")


def temporary_prefix(name: str) -> str:
  """`.<name>.<host>-<pid>.`: whose temporary file it is, so a resumed preparation
  removes only the leftovers of processes of this host that are gone."""
  return f".{name}.{_host()}-{os.getpid()}."


def is_stale_temporary(filename: str) -> bool:
  """A temporary file (see `temporary_prefix`) of a process of this host no longer
  running. Other hosts' files are never judged stale (their liveness is unknown)."""
  m = re.match(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.\w+\.tmp$", filename)
  if not m or m["host"] != _host():
    return False
  try:
    os.kill(int(m["pid"]), 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  return False


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


class ShardWriter:
  """Streams windows into one shard; `commit()` puts it in place atomically.

  The records go to a local temporary file (beside the shard when it is local, so the
  rename stays on one filesystem; in a local temp dir for gs://), then the file is
  renamed (local) or uploaded to its final object name (gs://). `abort()` (or leaving
  a `with` block on an exception) removes the temporary file; nothing named like a
  shard is ever left half-written.
  """

  def __init__(self, path, dtype, seq_len: int):
    from array_record.python import array_record_module  # noqa: PLC0415 - C++ extension
    self.path = epath.Path(path)
    self.dtype, self.seq_len = np.dtype(dtype), int(seq_len)
    self.windows = 0
    if is_gcs(self.path):
      fd, self._tmp = tempfile.mkstemp(prefix=temporary_prefix(self.path.name), suffix=".tmp")
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      fd, self._tmp = tempfile.mkstemp(prefix=temporary_prefix(self.path.name), suffix=".tmp",
                                       dir=os.fspath(self.path.parent))
    filemode.as_umask(fd)   # mkstemp's 0600 would keep teammates out of the corpus
    os.close(fd)
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)

  def write(self, window) -> None:
    window = np.asarray(window)
    if window.shape != (self.seq_len + 1,):
      raise ValueError(f"a window has shape {window.shape}, expected ({self.seq_len + 1},).")
    self._writer.write(window.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
    self.windows += 1

  def write_many(self, windows_NxL1: np.ndarray) -> None:
    for w in windows_NxL1:
      self.write(w)

  def close(self) -> dict:
    """Finishes the temporary file; returns {'bytes', 'sha256'} of the shard to be."""
    self._writer.close()
    self._writer = None
    return {"bytes": os.path.getsize(self._tmp), "sha256": _sha256_file(self._tmp)}

  def publish(self) -> None:
    """Puts the closed temporary file in place: rename (local) or upload (gs://)."""
    try:
      if is_gcs(self.path):
        with open(self._tmp, "rb") as src, self.path.open("wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 24)
      else:
        os.replace(self._tmp, os.fspath(self.path))
    finally:
      if os.path.exists(self._tmp):
        os.remove(self._tmp)

  def commit(self) -> dict:
    """close() + publish(); returns {'bytes', 'sha256'} of the shard."""
    info = self.close()
    self.publish()
    return info

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      self.abort()


def write_shard(path, windows: Iterable, dtype, seq_len: int) -> dict:
  """Writes `windows` (each `seq_len + 1` tokens) as one shard, atomically; returns
  {'windows', 'bytes', 'sha256'}."""
  with ShardWriter(path, dtype, seq_len) as w:
    for window in windows:
      w.write(window)
    info = w.commit()
  return {"windows": w.windows, **info}


def write_json(path, obj) -> None:
  """Writes JSON atomically: temp name + rename locally, one upload on gs://."""
  path = epath.Path(path)
  text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
  if is_gcs(path):
    path.write_text(text)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp",
                             dir=os.fspath(path.parent))
  try:
    filemode.as_umask(fd)
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, os.fspath(path))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_index(directory, field: str = "config.data.prepared_dir") -> dict:
  """index.json of a prepared dataset, checked (reader's checks, then the shard lists:
  no shard of 0 windows, split totals equal the sum of their shards). A tfds build
  directory of `growjax.data.beam_prepare` (no index.json, a dataset_info.json) gets an
  index made from its dataset_info, with `"layout": "tfds"`."""
  if (not (epath.Path(directory) / INDEX).exists()
      and (epath.Path(directory) / "dataset_info.json").exists()):
    return tfds_index(directory)
  index = reader.load_index(os.fspath(directory), field)
  path = epath.Path(directory) / INDEX
  for split, info in index["splits"].items():
    shards = info.get("shards", [])
    for s in shards:
      if int(s.get("windows", 0)) <= 0:
        raise ValueError(
            f"{path} lists shard {s.get('file')!r} of split {split!r} with no window — an "
            f"empty shard is never written by `growjax prepare-data`: prepare the dataset "
            f"again into an empty directory.")
    total = sum(int(s["windows"]) for s in shards)
    if total != int(info.get("windows", total)):
      raise ValueError(
          f"{path}: split {split!r} says {info.get('windows')} windows but its shards hold "
          f"{total} — the index is damaged: delete it and rerun `growjax prepare-data`.")
  return index


def check_shards(directory, index: dict | None = None) -> None:
  """Every shard index.json lists is present and, where the index records its size, of
  that size (a 0-byte or truncated file is named). One directory listing; no shard is
  opened, so the cost does not grow with the data."""
  directory = epath.Path(directory)
  index = read_index(directory) if index is None else index
  present = {p.name: p for p in directory.iterdir()}
  for split, info in index["splits"].items():
    for s in info.get("shards", []):
      p = present.get(s["file"])
      if p is None:
        raise ValueError(
            f"prepared shard {directory / s['file']} is missing (listed in {INDEX}) — "
            f"rerun `growjax prepare-data` with the same config to write it.")
      size = int(p.stat().length)
      if size == 0 or ("bytes" in s and size != int(s["bytes"])):
        what = "empty" if size == 0 else f"{size} bytes"
        if "bytes" in s:
          what += f", where {INDEX} lists {s['bytes']}"
        raise ValueError(
            f"prepared shard {p} is {what} — delete it and rerun `growjax prepare-data` "
            f"with the same config (only missing "
            f"shards are written again).")


def verify_shards(directory, index: dict | None = None) -> int:
  """`check_shards`, then every shard's sha256 against index.json (reads every byte: a
  damaged copy, e.g. after a transfer, is named). Returns the number of shards read."""
  directory = epath.Path(directory)
  index = read_index(directory) if index is None else index
  check_shards(directory, index)
  n = 0
  for info in index["splits"].values():
    for s in info.get("shards", []):
      if not s.get("sha256"):
        continue
      h = hashlib.sha256()
      with (directory / s["file"]).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
          h.update(block)
      if h.hexdigest() != s["sha256"]:
        raise ValueError(
            f"prepared shard {directory / s['file']} is damaged (its sha256 differs from "
            f"{INDEX}'s) — delete it and rerun `growjax prepare-data` with the same config "
            f"(only missing shards are written again).")
      n += 1
  return n


def tfds_index(directory) -> dict:
  """The index of a `beam_prepare` tfds build (its dataset_info.json; no shard read)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415
  info = tfds.builder_from_directory(os.fspath(directory)).info
  meta = (info.metadata or {}).get("growjax")
  if not meta:
    raise ValueError(f"{directory} is a tfds dataset but not a growjax prepared one (no "
                     f"'growjax' metadata) — build it with growjax.data.beam_prepare or "
                     f"prepare it with `growjax prepare-data`.")
  splits = {}
  for name, split in info.splits.items():
    files = split.filenames
    lengths = list(split.shard_lengths)
    splits[name] = {"windows": int(split.num_examples),
                    "tokens": int(split.num_examples) * int(meta["seq_len"]),
                    "documents": None,
                    "shards": [{"file": f, "windows": int(n),
                                "tokens": int(n) * int(meta["seq_len"]), "documents": None}
                               for f, n in zip(files, lengths)]}
  return {"format": FORMAT, "layout": "tfds", "seq_len": int(meta["seq_len"]),
          "dtype": meta["dtype"], "tokenizer": dict(meta["tokenizer"]), "sources": [],
          "text_key": meta["text_key"], "splits": splits}


class TfdsWindows:
  """The windows of a `beam_prepare` tfds split as raw records (like `ShardSource`), read
  through tfds's random-access data source (no TensorFlow)."""

  def __init__(self, directory, split: str, dtype: str):
    self.directory, self.split, self.dtype = os.fspath(directory), split, np.dtype(dtype)
    self._source = None
    self._len = None

  def _src(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # noqa: PLC0415
      self._source = tfds.builder_from_directory(self.directory).as_data_source(self.split)
    return self._source

  def __len__(self) -> int:
    return len(self._src())

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __getitems__(self, ids) -> list[bytes]:
    rows = self._src().__getitems__([int(g) for g in ids])
    return [np.asarray(r["tokens"]).astype(self.dtype.newbyteorder("<")).tobytes()
            for r in rows]

  def __getitem__(self, g: int) -> bytes:
    return self.__getitems__([g])[0]


def open_shards(directory, split: str, *, check: bool = False) -> reader.ShardSource:
  """A grain-compatible random-access source (`len`, `[g]`, `__getitems__`) over every
  window of `split`, in stored order; records are raw bytes of the index's dtype.
  `check=True` lists the directory once first (`check_shards`)."""
  index = read_index(directory)
  if split not in index["splits"]:
    raise ValueError(f"{epath.Path(directory) / INDEX} has no split {split!r} (splits: "
                     f"{sorted(index['splits'])}) — prepare it with files for that split.")
  if index.get("layout") == "tfds":
    return TfdsWindows(directory, split, index["dtype"])
  if check:
    check_shards(directory, index)
  return reader.open_split(os.fspath(directory), index, split)
