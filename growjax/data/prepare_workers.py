"""The tokenizing pool of `growjax prepare-data`: N spawned worker processes (or inline
for one) that tokenize units into local spill files, die with their parent, and hand
results back in submission order so the output does not depend on N. The Beam builder
(`growjax.data.beam_prepare`) tokenizes with the same functions."""

from __future__ import annotations

import collections
import concurrent.futures as futures
import hashlib
import multiprocessing
import os
import signal
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from growjax.data import formats
from growjax.data.tokenizers import Tokenizer, make_tokenizer

_ENCODE_BATCH_BYTES = 1 << 20   # documents handed to encode_batch at once

_TOKENIZERS: dict[str, Tokenizer] = {}


def cached_tokenizer(spec: str) -> Tokenizer:
  """The tokenizer `spec` names, made once per process (a worker tokenizes many units)."""
  if spec not in _TOKENIZERS:
    _TOKENIZERS[spec] = make_tokenizer(spec)
  return _TOKENIZERS[spec]


def tokenize_documents(texts: Sequence[str], tok: Tokenizer, dtype) -> np.ndarray:
  """`BOS doc EOS` for each text, concatenated, in `dtype` (one encode_batch call)."""
  dtype = np.dtype(dtype)
  parts = []
  bos, eos = np.array([tok.bos_id], dtype), np.array([tok.eos_id], dtype)
  for ids in tok.encode_batch(list(texts)):
    parts += [bos, np.asarray(ids).astype(dtype, copy=False), eos]
  return np.concatenate(parts) if parts else np.zeros(0, dtype)


def iter_unit_tokens(unit: formats.Unit, tok: Tokenizer, dtype) -> Iterator[tuple[np.ndarray, int]]:
  """(tokens, documents) pieces of one unit, `_ENCODE_BATCH_BYTES` of text at a time."""
  batch, size = [], 0
  for text in formats.read_unit(unit):
    batch.append(text)
    size += len(text)
    if size >= _ENCODE_BATCH_BYTES:
      yield tokenize_documents(batch, tok, dtype), len(batch)
      batch, size = [], 0
  if batch:
    yield tokenize_documents(batch, tok, dtype), len(batch)


def tokenize_unit(unit: formats.Unit, spec: str, dtype: str, spill_dir: str,
                   number: int) -> tuple[str, int, int]:
  """Worker task: tokenizes one unit into a spill file; returns (path, tokens, docs)."""
  tok = cached_tokenizer(spec)
  path = os.path.join(spill_dir, f"unit-{number:08d}.tokens")
  tokens = docs = 0
  with open(path, "wb") as f:
    for ids, n in iter_unit_tokens(unit, tok, dtype):
      f.write(ids.tobytes())
      tokens, docs = tokens + len(ids), docs + n
  return path, tokens, docs


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with formats.open_file(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _worker_init(parent: int) -> None:
  # Each worker is one process of N: the Rust tokenizers would otherwise start its own
  # thread pool in every worker and oversubscribe the cores.
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  # A SIGKILLed preparation must not leave its workers behind: die with the parent
  # (Linux's PR_SET_PDEATHSIG; elsewhere a thread watching the parent id).
  try:
    import ctypes  # noqa: PLC0415
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
  if os.getppid() != parent:
    os._exit(1)

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()


class _InProcess:
  """The executor interface, run inline: workers <= 1 needs no process."""

  def submit(self, fn, *args):
    f = futures.Future()
    try:
      f.set_result(fn(*args))
    except BaseException as e:  # noqa: BLE001 - delivered through the future, as a pool does
      f.set_exception(e)
    return f

  def shutdown(self, wait=True, cancel_futures=False):
    del wait, cancel_futures


def make_executor(workers: int):
  if workers <= 1:
    return _InProcess()
  # spawn: the parent may hold threads (absl, grain, jax) that fork would copy half-held.
  return futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(os.getpid(),))


def ordered(executor, tasks: Iterator[tuple], in_flight: int) -> Iterator:
  """Results of `tasks` (fn, *args) in submission order, at most `in_flight` pending."""
  pending: collections.deque = collections.deque()
  for task in tasks:
    pending.append(executor.submit(*task))
    if len(pending) >= in_flight:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()
