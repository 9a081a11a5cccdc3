"""A split tokenized once into a flat, memory-mapped token stream.

The stream is `BOS doc_0 EOS BOS doc_1 EOS ...` in the split's stored order,
saved as `<data_dir>/growjax_tokens/<dataset>/<version>/<split>.<tokenizer>.npy`
(uint16 when the vocabulary fits, else int32). It is written to a temporary
file and renamed into place, so concurrent writers are harmless and a reader
never sees half a file; the second run only memory-maps it.

`window(stream, i, seq_len)` is window i of `seq_len + 1` tokens, stride
`seq_len`: inputs are its first `seq_len` tokens, targets its last `seq_len`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np

from growjax import faults
from growjax.data.tokenizers import Tokenizer

TOKEN_DIR = "growjax_tokens"
_FLUSH_TOKENS = 1 << 22  # tokens buffered before a write to the raw temp file


def stream_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def stream_path(data_dir: str, key: str, tokenizer: Tokenizer) -> str:
  return os.path.join(data_dir, TOKEN_DIR, f"{key}.{tokenizer.identity}.npy")


def write_stream(path: str, texts: Iterable[str], tokenizer: Tokenizer) -> int:
  """Tokenizes `texts` into `path` atomically; returns the token count.

  Tokens go to a raw temp file as they come (memory stays flat for large
  splits), then into a `.npy` that is renamed over `path`.
  """
  dtype = stream_dtype(tokenizer.vocab_size)
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  bos = np.array([tokenizer.bos_id], dtype=dtype)
  eos = np.array([tokenizer.eos_id], dtype=dtype)
  raw_fd, raw_path = tempfile.mkstemp(dir=folder, suffix=".raw.tmp")
  npy_fd, npy_path = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
  os.close(npy_fd)
  try:
    count, pending, pending_len = 0, [], 0
    with os.fdopen(raw_fd, "wb") as raw:
      for text in texts:
        pending += [bos, tokenizer.encode(text).astype(dtype), eos]
        pending_len += len(pending[-2]) + 2
        if pending_len >= _FLUSH_TOKENS:
          raw.write(np.concatenate(pending).tobytes())
          count, pending, pending_len = count + pending_len, [], 0
      if pending:
        raw.write(np.concatenate(pending).tobytes())
        count += pending_len
    out = np.lib.format.open_memmap(npy_path, mode="w+", dtype=dtype, shape=(count,))
    for start in range(0, count, _FLUSH_TOKENS):
      n = min(_FLUSH_TOKENS, count - start)
      out[start:start + n] = np.fromfile(raw_path, dtype=dtype, count=n,
                                         offset=start * dtype.itemsize)
      faults.maybe_kill("mid_data")
    out.flush()
    del out
    os.replace(npy_path, path)
  finally:
    for tmp in (raw_path, npy_path):
      if os.path.exists(tmp):
        os.remove(tmp)
  return count


def load_stream(path: str) -> np.ndarray:
  """The cached stream, memory-mapped read-only."""
  return np.load(path, mmap_mode="r")


def num_windows(stream: np.ndarray, seq_len: int) -> int:
  return max(0, (len(stream) - 1) // seq_len)


def gather_windows(stream: np.ndarray, indices: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  """Windows `indices` as `{'inputs', 'targets'}`, each int32 (len(indices), seq_len)."""
  rows_BxL1 = np.stack([stream[i * seq_len:i * seq_len + seq_len + 1] for i in indices])
  rows_BxL1 = rows_BxL1.astype(np.int32)
  return {"inputs": rows_BxL1[:, :-1], "targets": rows_BxL1[:, 1:]}
