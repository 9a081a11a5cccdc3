"""Packed windows -> the five arrays of a batch (inputs, targets, segment ids, positions,
loss mask), as pure numpy.

A prepared window holds `seq_len + 1` tokens of the packed stream
`BOS doc EOS BOS doc EOS ...`; inputs are its first `seq_len` tokens, targets its last
`seq_len`. For each INPUT token:

- `segment_ids`: 1-based index of its document within the window. A BOS starts a new
  document; the tokens before the window's first BOS (a document continuing from the
  previous window) are document 1. 0 marks padding.
- `positions`: its position within its document, restarting at 0 at each BOS and at the
  window start (a continued document's tokens count from the window start: the model
  never sees the earlier part of it in this window).
- `loss_mask`: 1 where the TARGET is a real token, 0 where it is padding.

Padding is a token equal to `pad_id`, counted only when `pad_id` is a real id (>= 0) that
is neither BOS nor EOS (some tokenizers reuse EOS as pad; an EOS is never padding).
Prepared datasets drop a split's partial last window, so their windows hold no padding;
padding exists for sources that pad short documents.

This module reads nothing and knows no tokenizer; callers pass the ids.
"""

from __future__ import annotations

import numpy as np

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def _pad_mask(tokens: np.ndarray, bos_id: int, eos_id: int | None, pad_id: int | None
              ) -> np.ndarray:
  if pad_id is None or pad_id < 0 or pad_id == bos_id or pad_id == eos_id:
    return np.zeros(tokens.shape, dtype=bool)
  return tokens == pad_id


def segments_and_positions(inputs_BxT: np.ndarray, bos_id: int, pad_id: int | None = None,
                           eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`(segment_ids_BxT, positions_BxT)`, int32, for the input tokens of packed windows."""
  tokens_BxT = np.asarray(inputs_BxT)
  if tokens_BxT.ndim != 2:
    raise ValueError(f"inputs must be (batch, seq_len), got shape {tokens_BxT.shape}.")
  _, seq = tokens_BxT.shape
  is_bos_BxT = tokens_BxT == bos_id
  # A BOS in column 0 starts document 1 (not 2): only later BOS tokens open new ones.
  opens_BxT = is_bos_BxT.copy()
  opens_BxT[:, 0] = False
  segment_BxT = 1 + np.cumsum(opens_BxT, axis=1, dtype=np.int32)
  # Position = column - column of the latest document start (a BOS, or the window start).
  col_T = np.arange(seq, dtype=np.int32)
  start_BxT = np.where(is_bos_BxT, col_T, 0)
  start_BxT = np.maximum.accumulate(start_BxT, axis=1)
  positions_BxT = (col_T - start_BxT).astype(np.int32)
  pad_BxT = _pad_mask(tokens_BxT, bos_id, eos_id, pad_id)
  segment_BxT = np.where(pad_BxT, 0, segment_BxT).astype(np.int32)
  positions_BxT = np.where(pad_BxT, 0, positions_BxT).astype(np.int32)
  return segment_BxT, positions_BxT


def batch_from_windows(windows_BxL1: np.ndarray, bos_id: int, pad_id: int | None = None,
                       eos_id: int | None = None) -> dict[str, np.ndarray]:
  """Windows of `seq_len + 1` tokens -> the batch dict of `BATCH_KEYS`, each int32
  (batch, seq_len)."""
  windows_BxL1 = np.asarray(windows_BxL1)
  if windows_BxL1.ndim != 2 or windows_BxL1.shape[1] < 2:
    raise ValueError(f"windows must be (batch, seq_len + 1), got {windows_BxL1.shape}.")
  windows_BxL1 = windows_BxL1.astype(np.int32)
  inputs_BxT, targets_BxT = windows_BxL1[:, :-1], windows_BxL1[:, 1:]
  segment_BxT, positions_BxT = segments_and_positions(inputs_BxT, bos_id, pad_id, eos_id)
  loss_mask_BxT = (~_pad_mask(targets_BxT, bos_id, eos_id, pad_id)).astype(np.int32)
  return {"inputs": np.ascontiguousarray(inputs_BxT),
          "targets": np.ascontiguousarray(targets_BxT),
          "segment_ids": segment_BxT, "positions": positions_BxT, "loss_mask": loss_mask_BxT}
