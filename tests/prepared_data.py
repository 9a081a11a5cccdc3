"""Test helper: small prepared datasets written straight in the prepared format (shards of
ArrayRecord windows + index.json), so reading is tested without running a preparation."""

from __future__ import annotations

import json
import os

import numpy as np
from array_record.python import array_record_module

BOS, EOS, PAD = 1, 2, 0


def pack(docs) -> np.ndarray:
  return np.concatenate([np.concatenate([[BOS], d, [EOS]]) for d in docs]).astype(np.int64)


def write_prepared(directory, splits: dict, seq_len: int, *, shard_windows: int = 10,
                   identity: str = "byte", vocab_size: int = 259) -> dict:
  """`splits`: {'train': [doc token arrays], ...}. Returns the index written."""
  os.makedirs(directory, exist_ok=True)
  dtype = np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)
  out = {}
  for split, docs in splits.items():
    stream = pack(docs)
    n = (len(stream) - 1) // seq_len
    shards = []
    for s, start in enumerate(range(0, n, shard_windows)):
      name = f"{split}-{s:05d}.array_record"
      w = array_record_module.ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
      count = min(shard_windows, n - start)
      for i in range(start, start + count):
        w.write(stream[i * seq_len:i * seq_len + seq_len + 1].astype(dtype).tobytes())
      w.close()
      shards.append({"file": name, "windows": count, "tokens": count * seq_len,
                     "documents": 0})
    out[split] = {"windows": n, "tokens": len(stream), "documents": len(docs),
                  "shards": shards}
  index = {"format": "growjax-prepared/1", "seq_len": seq_len, "dtype": dtype.name,
           "tokenizer": {"spec": identity, "identity": identity, "vocab_size": vocab_size,
                         "bos_id": BOS, "eos_id": EOS, "pad_id": PAD},
           "sources": [], "text_key": "text", "splits": out}
  with open(os.path.join(directory, "index.json"), "w") as f:
    json.dump(index, f)
  return index


def tagged_docs(tag: int, n_docs: int, length: int, seed: int = 0):
  """Documents whose every token is `tag` or `tag + 1`: which dataset a window came from
  is read off its tokens."""
  rng = np.random.default_rng(seed + tag)
  return [tag + rng.integers(0, 2, length) for _ in range(n_docs)]


def all_windows(directory, split, seq_len):
  """Every window of a split in stored order, re-cut from the index's shards."""
  with open(os.path.join(directory, "index.json")) as f:
    index = json.load(f)
  rows = []
  for shard in index["splits"][split]["shards"]:
    r = array_record_module.ArrayRecordReader(os.path.join(directory, shard["file"]))
    rows += [np.frombuffer(b, dtype=index["dtype"]) for b in r.read_all()]
    r.close()
  return np.stack(rows).astype(np.int32)
