"""A packed token stream cut into training windows: `seq_len + 1` tokens at stride
`seq_len`, cut in order (`cut_windows`, `prepare`) or in parallel from pieces
(`window_pieces` / `assemble_window`, the Beam builder) with the same result, and where
each buffered token came from (`Origins`: the resume cursor of a shard)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def cut_windows(buf: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
  """The full windows of `buf` (n, seq_len + 1), stride seq_len (a view), and n."""
  n = (len(buf) - 1) // seq_len if len(buf) > seq_len else 0
  if n == 0:
    return buf[:0].reshape(0, seq_len + 1), 0
  view = np.lib.stride_tricks.sliding_window_view(buf[:n * seq_len + 1], seq_len + 1)
  return view[::seq_len], n


def count_documents(windows: np.ndarray, bos_id: int, eos_id: int) -> int:
  """Documents starting in `windows`' inputs (BOS tokens; halved when BOS is also EOS)."""
  n = int(np.count_nonzero(windows[:, :-1] == bos_id))
  return (n + 1) // 2 if bos_id == eos_id else n


def window_pieces(start: int, tokens: np.ndarray, seq_len: int,
                  total: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """The parts of full windows that `tokens` (stream positions [start, start + len))
  holds: (window id, offset in the window, tokens). Window w is stream[w*T : w*T + T + 1]
  of a stream of `total` tokens (the partial last window is dropped). The Beam builder
  cuts windows this way, in parallel, where `prepare` cuts them in order."""
  n = (total - 1) // seq_len if total > seq_len else 0
  end = start + len(tokens)
  if n == 0 or end <= start:
    return
  lo = max(0, (start - 1) // seq_len)
  hi = min(n - 1, (end - 1) // seq_len)
  for w in range(lo, hi + 1):
    a, b = max(start, w * seq_len), min(end, w * seq_len + seq_len + 1)
    if a < b:
      yield w, a - w * seq_len, tokens[a - start:b - start]


def assemble_window(pieces, seq_len: int, dtype) -> np.ndarray:
  """One window from its `window_pieces` (offset, tokens), in any order."""
  out = np.empty(seq_len + 1, dtype)
  filled = 0
  for offset, piece in pieces:
    out[offset:offset + len(piece)] = piece
    filled += len(piece)
  if filled != seq_len + 1:
    raise AssertionError(f"a window got {filled} tokens, not {seq_len + 1}")
  return out


class Origins:
  """Which (unit, token offset) each position of the packing buffer came from."""

  def __init__(self, segments=()):
    self.segments = list(segments)  # (unit, offset, length), in buffer order

  def locate(self, pos: int) -> tuple[int, int]:
    for unit, offset, length in self.segments:
      if pos < length:
        return unit, offset + pos
      pos -= length
    raise AssertionError("position past the buffer")

  def tail(self, pos: int) -> "Origins":
    out = []
    for unit, offset, length in self.segments:
      if pos >= length:
        pos -= length
        continue
      out.append((unit, offset + pos, length - pos))
      pos = 0
    return Origins(out)
