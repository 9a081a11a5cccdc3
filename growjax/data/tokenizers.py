"""Tokenizers: a file-free byte tokenizer and SentencePiece models.

Both share one small interface (`encode`, `decode`, `vocab_size`, `bos_id`,
`eos_id`, `pad_id`, `identity`) and are built from a spec string by
`make_tokenizer`: `'byte'` or `'spm:/path/to/model'`. `train_sentencepiece`
trains a SentencePiece model offline whose special ids match the byte
tokenizer's (pad=0, bos=1, eos=2, unk=3).

This module does not pack, batch or cache anything; see `growjax.data.stream`.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
from typing import Iterable, Protocol, Sequence

import numpy as np

BYTE_PAD, BYTE_BOS, BYTE_EOS = 0, 1, 2
BYTE_OFFSET = 3  # byte b is token b + 3
SPM_PREFIX = "spm:"


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int
  identity: str  # stable across runs; part of the token-cache key

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted by 3: pad=0, bos=1, eos=2, byte b -> b + 3."""

  vocab_size = 256 + BYTE_OFFSET
  bos_id, eos_id, pad_id = BYTE_BOS, BYTE_EOS, BYTE_PAD
  identity = "byte"

  def encode(self, text: str) -> np.ndarray:
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return raw.astype(np.int32) + BYTE_OFFSET

  def decode(self, ids) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    # Special tokens carry no text; anything out of range is dropped too.
    ids = ids[(ids >= BYTE_OFFSET) & (ids < self.vocab_size)]
    return bytes((ids - BYTE_OFFSET).astype(np.uint8)).decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class SentencePieceTokenizer:
  """A SentencePiece model loaded from a `.model` file.

  `pad_id` is -1 when the model defines no pad piece; packing never pads.
  """

  def __init__(self, model_path: str):
    import sentencepiece as spm  # imported here so 'byte' runs never need it
    with open(model_path, "rb") as f:
      proto = f.read()
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    self.vocab_size = int(self._sp.get_piece_size())
    self.bos_id = int(self._sp.bos_id())
    self.eos_id = int(self._sp.eos_id())
    self.pad_id = int(self._sp.pad_id())
    # Keyed by content, not path: moving the file keeps the cache, retraining
    # in place invalidates it.
    self.identity = "spm-" + hashlib.sha256(proto).hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.model_path!r})"


def make_tokenizer(spec: str) -> Tokenizer:
  """Builds a tokenizer from `config.data.tokenizer`: 'byte' or 'spm:PATH'."""
  spec = (spec or "").strip()
  if spec == "byte":
    return ByteTokenizer()
  if spec.startswith(SPM_PREFIX):
    path = os.path.expanduser(spec[len(SPM_PREFIX):])
    if not path:
      raise ValueError(
          f"config.data.tokenizer={spec!r} names no model file; "
          "use 'spm:/path/to/model.model'.")
    if not os.path.isfile(path):
      raise ValueError(
          f"config.data.tokenizer={spec!r}: SentencePiece model file {path!r} "
          "does not exist. Train one with "
          "growjax.data.tokenizers.train_sentencepiece or use 'byte'.")
    tok = SentencePieceTokenizer(path)
    if tok.bos_id < 0 or tok.eos_id < 0:
      raise ValueError(
          f"config.data.tokenizer={spec!r}: model {path!r} has no bos/eos piece "
          f"(bos_id={tok.bos_id}, eos_id={tok.eos_id}); document packing needs "
          "both. Retrain with train_sentencepiece.")
    return tok
  raise ValueError(
      f"config.data.tokenizer={spec!r} is not a tokenizer spec; "
      "use 'byte' or 'spm:/path/to/model.model'.")


def train_sentencepiece(
    text_files_or_iterator: str | Sequence[str] | Iterable[str],
    vocab_size: int,
    model_prefix: str,
    *,
    model_type: str = "unigram",
    byte_fallback: bool = True,
    max_sentences: int = 2_000_000,
) -> str:
  """Trains a SentencePiece model offline and returns the `.model` path.

  Args:
    text_files_or_iterator: a path or glob (comma-separated allowed), a list of
      paths, or an iterator of text strings. Files are read line by line.
    vocab_size: the requested vocabulary size (with `byte_fallback` it must
      exceed 259: 256 byte pieces + pad/bos/eos/unk). A corpus too small for it
      is an error naming the size it reaches (no model is left behind), never
      a quietly smaller vocabulary.
    model_prefix: writes `<model_prefix>.model` and `<model_prefix>.vocab`.
    model_type: 'unigram' or 'bpe'.
    byte_fallback: encode unknown characters as bytes instead of `unk`.
    max_sentences: sample at most this many lines for training.
  """
  import sentencepiece as spm
  kwargs = dict(
      model_prefix=model_prefix, vocab_size=vocab_size, model_type=model_type,
      pad_id=BYTE_PAD, bos_id=BYTE_BOS, eos_id=BYTE_EOS, unk_id=BYTE_OFFSET,
      byte_fallback=byte_fallback, character_coverage=0.9995 if byte_fallback else 1.0,
      hard_vocab_limit=False, input_sentence_size=max_sentences,
      shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
      minloglevel=2)
  if isinstance(text_files_or_iterator, (str, os.PathLike)):
    text_files_or_iterator = expand_globs(str(text_files_or_iterator))
    if not text_files_or_iterator:
      raise ValueError("train_sentencepiece: the glob matches no files.")
  if isinstance(text_files_or_iterator, (list, tuple)):
    missing = [p for p in text_files_or_iterator if not os.path.isfile(p)]
    if missing:
      raise ValueError(f"train_sentencepiece: missing files {missing}.")
    kwargs["input"] = ",".join(text_files_or_iterator)
  else:
    # SentencePiece reads one sentence per item; split documents into lines.
    kwargs["sentence_iterator"] = (
        line for text in text_files_or_iterator for line in text.splitlines()
        if line.strip())
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(**kwargs)
  path = model_prefix + ".model"
  reached = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  if reached < vocab_size:
    for suffix in (".model", ".vocab"):
      if os.path.exists(model_prefix + suffix):
        os.remove(model_prefix + suffix)
    raise ValueError(
        f"--vocab_size {vocab_size} is more than this corpus supports: training reached "
        f"{reached} pieces — give --vocab_size {reached} (or less), or train on more text")
  return path


def expand_globs(patterns: str | Sequence[str]) -> list[str]:
  """Comma-separated globs (or a list of them) -> sorted, de-duplicated files.

  A pattern starting with `!` excludes the files it matches (fnmatch, where `*`
  also crosses `/`), e.g. `corpus/**/*.txt,!corpus/heldout/*`.
  """
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  patterns = [os.path.expanduser(p.strip()) for p in patterns if p.strip()]
  include = [p for p in patterns if not p.startswith("!")]
  exclude = [p[1:] for p in patterns if p.startswith("!")]
  files = set()
  for pattern in include:
    files.update(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  return sorted(f for f in files if not any(fnmatch.fnmatch(f, x) for x in exclude))
