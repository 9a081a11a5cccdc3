"""Tokenizers: byte, SentencePiece, Hugging Face `tokenizers` and tiktoken, all local.

All share one small interface (`encode`, `encode_batch`, `decode`, `vocab_size`,
`bos_id`, `eos_id`, `pad_id`, `identity`) and are built from a spec string by
`make_tokenizer`:

- `'byte'`: UTF-8 bytes, no file (pad=0, bos=1, eos=2, byte b -> b + 3);
- `'spm:/path/model.model'`: a SentencePiece model;
- `'hf:/path/tokenizer.json'` (or `'hf:/path/dir'` holding one): a Hugging Face
  `tokenizers` file, the format Llama-3, Mistral and GPT-NeoX ship. BOS/EOS/pad come
  from `tokenizer_config.json` beside it when present (`bos_token`, `eos_token`,
  `pad_token`), else from the special tokens the file declares, by their usual names;
- `'tiktoken:/path/cl100k_base.tiktoken'` (or `...file@ENCODING`): a tiktoken rank file
  read locally; the split pattern and special tokens are those of the named encoding
  (`cl100k_base`, `o200k_base`, `p50k_base`, `r50k_base`, ... as tiktoken defines them,
  or `llama3` for Meta's `tokenizer.model`), named by `@ENCODING` or the file's stem.
  Nothing is downloaded.

A tokenizer with an end-of-text token but no separate BOS (GPT-2, NeoX, cl100k, ...)
uses that token as both BOS and EOS; one with neither is refused (packing needs a
document separator). `pad_id` is -1 when the tokenizer has none: packing never pads.
`identity` is a content hash (the file's bytes and the special ids chosen), so moving a
file keeps the identity and editing it changes it.

`train_sentencepiece` trains a SentencePiece model offline whose special ids match the
byte tokenizer's (pad=0, bos=1, eos=2, unk=3); `train_hf_bpe` trains a byte-level BPE
`tokenizer.json` with the same special ids.

This module does not pack, batch or write anything; see `growjax.data.prepare`.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import threading
from typing import Iterable, Protocol, Sequence

import numpy as np

BYTE_PAD, BYTE_BOS, BYTE_EOS = 0, 1, 2
BYTE_OFFSET = 3  # byte b is token b + 3
SPM_PREFIX = "spm:"
HF_PREFIX = "hf:"
TIKTOKEN_PREFIX = "tiktoken:"
SPECS = "'byte', 'spm:/path/model.model', 'hf:/path/tokenizer.json' or 'tiktoken:/path/NAME.tiktoken'"


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int
  identity: str  # stable across runs; part of the token-cache key

  def encode(self, text: str) -> np.ndarray: ...
  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...
  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted by 3: pad=0, bos=1, eos=2, byte b -> b + 3."""

  vocab_size = 256 + BYTE_OFFSET
  bos_id, eos_id, pad_id = BYTE_BOS, BYTE_EOS, BYTE_PAD
  identity = "byte"

  def encode(self, text: str) -> np.ndarray:
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return raw.astype(np.int32) + BYTE_OFFSET

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

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

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    # One call for the batch: SentencePiece encodes a list in its own C++ threads.
    return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts))]

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.model_path!r})"


# Special-token names, most specific first: what tokenizer.json files call them when no
# tokenizer_config.json says (Llama-3, Llama-2/Mistral, GPT-2/NeoX, ChatML-era files).
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>", "[BOS]", "<|bos|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>", "[EOS]", "<|eos|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


def _special_id(value, token_to_id) -> int | None:
  """A tokenizer_config.json special-token entry (a string or {'content': ...}) -> id."""
  if isinstance(value, dict):
    value = value.get("content")
  if not isinstance(value, str):
    return None
  return token_to_id(value)


def _pick_specials(label: str, names: dict[str, int], config: dict) -> tuple[int, int, int]:
  """(bos, eos, pad) from `config` (tokenizer_config.json) or the usual names.

  Only EOS (or only BOS) present: it serves as both. Neither: an error naming `label`."""
  def find(key, candidates):
    if key in config:
      got = _special_id(config[key], names.get)
      if got is not None:
        return got
    return next((names[n] for n in candidates if n in names), None)
  bos, eos, pad = find("bos_token", _BOS_NAMES), find("eos_token", _EOS_NAMES), find(
      "pad_token", _PAD_NAMES)
  bos = eos if bos is None else bos
  eos = bos if eos is None else eos
  if bos is None:
    raise ValueError(
        f"{label} has neither a BOS nor an EOS token (looked for tokenizer_config.json's "
        f"bos_token/eos_token, then {list(_BOS_NAMES + _EOS_NAMES)}) — packing needs a "
        f"document separator: add one as a special token, or name it in a "
        f"tokenizer_config.json beside the file.")
  return int(bos), int(eos), -1 if pad is None else int(pad)


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json, encoded without its post-processor's
  special tokens (packing adds BOS/EOS itself)."""

  def __init__(self, path: str):
    import tokenizers  # noqa: PLC0415 - only hf: runs need it
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise ValueError(
          f"config.data.tokenizer='hf:{path}': {path} does not exist — give the path of a "
          f"tokenizer.json (or of the folder holding it).")
    with open(path, "rb") as f:
      raw = f.read()
    try:
      self._tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the Rust parser raises Exception subclasses
      first = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(
          f"{path} is not a valid Hugging Face tokenizer.json ({first}) — use the "
          f"tokenizer.json the model ships (saved by tokenizers' Tokenizer.save), not a "
          f"truncated or hand-edited copy.") from None
    self.path = path
    # '<s>' written in a document is text, not a document boundary packing did not make.
    self._tok.encode_special_tokens = True
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
      try:
        with open(config_path, encoding="utf-8") as f:
          config = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}) — fix or remove it (the "
                         f"special tokens are then read from {path}).") from None
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True),
                          max(vocab.values(), default=-1) + 1)
    specials = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
    self.bos_id, self.eos_id, self.pad_id = _pick_specials(
        path, {**vocab, **specials}, config)
    digest = hashlib.sha256(raw)
    digest.update(f"{self.bos_id},{self.eos_id},{self.pad_id}".encode())
    self.identity = "hf-" + digest.hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    # encode_batch_fast: no offsets computed; the Rust side splits the batch over its
    # own threads (TOKENIZERS_PARALLELISM; off in worker processes, which parallelise).
    out = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in out]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r})"


# Meta's Llama-3 tokenizer.model is a tiktoken rank file with this pattern and 256
# special tokens after its 128,000 ranks (Meta's llama3 tokenizer.py).
_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"]
                    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                    + ["<|start_header_id|>", "<|end_header_id|>",
                       "<|reserved_special_token_4|>", "<|eot_id|>"]
                    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
_TIKTOKEN_LOCK = threading.Lock()


def _tiktoken_definition(name: str, ranks_path: str) -> dict:
  """pattern + special tokens of encoding `name`, with the ranks read from `ranks_path`.

  tiktoken's own constructors (tiktoken_ext.openai_public) are called with their loader
  pointed at the local file, so patterns and special ids are exactly tiktoken's."""
  from tiktoken import load as tt_load  # noqa: PLC0415
  try:
    ranks = tt_load.load_tiktoken_bpe(ranks_path)
  except Exception as e:  # noqa: BLE001 - a damaged file fails in base64 / int parsing
    raise ValueError(f"{ranks_path} is not a tiktoken rank file ({type(e).__name__}: {e}) "
                     f"— give the .tiktoken file of the encoding.") from None
  if name == "llama3":
    return {"name": name, "pat_str": _LLAMA3_PATTERN, "mergeable_ranks": ranks,
            "special_tokens": {t: len(ranks) + i for i, t in enumerate(_LLAMA3_SPECIALS)}}
  from tiktoken_ext import openai_public  # noqa: PLC0415
  known = [n for n in ("r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base",
                       "o200k_harmony") if hasattr(openai_public, n)]
  if name not in known:
    raise ValueError(
        f"config.data.tokenizer: tiktoken encoding {name!r} is not known (from the file "
        f"name or '@NAME') — name one of {known + ['llama3']}, e.g. "
        f"'tiktoken:{ranks_path}@cl100k_base'.")
  with _TIKTOKEN_LOCK:
    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *a, **k: ranks
    try:
      return getattr(openai_public, name)()
    finally:
      openai_public.load_tiktoken_bpe = original


class TiktokenTokenizer:
  """A tiktoken encoding from a local rank file; special tokens in the text are encoded
  as text (never as control tokens)."""

  def __init__(self, spec_path: str):
    import tiktoken  # noqa: PLC0415
    path, _, name = spec_path.partition("@")
    if not os.path.isfile(path):
      raise ValueError(
          f"config.data.tokenizer='tiktoken:{spec_path}': {path} does not exist — give a "
          f"local .tiktoken rank file (nothing is downloaded).")
    stem = os.path.basename(path).split(".")[0]
    name = name or ("llama3" if stem == "tokenizer" else stem)
    with open(path, "rb") as f:
      raw = f.read()
    definition = _tiktoken_definition(name, path)
    self.path, self.name = path, name
    self._enc = tiktoken.Encoding(
        name=f"growjax-{name}", pat_str=definition["pat_str"],
        mergeable_ranks=definition["mergeable_ranks"],
        special_tokens=definition["special_tokens"])
    self.vocab_size = int(self._enc.n_vocab)
    self.bos_id, self.eos_id, self.pad_id = _pick_specials(
        path, dict(definition["special_tokens"]), {})
    digest = hashlib.sha256(raw)
    digest.update(f"{name},{self.bos_id},{self.eos_id}".encode())
    self.identity = "tiktoken-" + digest.hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.int32)
            for ids in self._enc.encode_ordinary_batch(list(texts), num_threads=1)]

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)
           if int(i) not in self._enc._special_tokens.values()]  # noqa: SLF001
    return self._enc.decode(ids)

  def __repr__(self) -> str:
    return f"TiktokenTokenizer({self.path!r}, {self.name!r})"


def _file_spec(spec: str, prefix: str) -> str:
  path = os.path.expanduser(spec[len(prefix):].strip())
  if not path:
    raise ValueError(f"config.data.tokenizer={spec!r} names no file; use {SPECS}.")
  return path


def make_tokenizer(spec: str) -> Tokenizer:
  """Builds a tokenizer from `config.data.tokenizer` (see the module docstring)."""
  spec = (spec or "").strip()
  if spec == "byte":
    return ByteTokenizer()
  if spec.startswith(HF_PREFIX):
    return HFTokenizer(_file_spec(spec, HF_PREFIX))
  if spec.startswith(TIKTOKEN_PREFIX):
    return TiktokenTokenizer(_file_spec(spec, TIKTOKEN_PREFIX))
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
      f"config.data.tokenizer={spec!r} is not a tokenizer spec — use {SPECS}.")


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



def train_hf_bpe(texts: Iterable[str], vocab_size: int, out_dir: str) -> str:
  """Trains a byte-level BPE `tokenizer.json` (Hugging Face `tokenizers`) on `texts`
  (documents) into `out_dir`, with a `tokenizer_config.json` naming its specials
  (pad=0 '<pad>', bos=1 '<s>', eos=2 '</s>', as the byte tokenizer); returns the path of
  tokenizer.json. A corpus too small for `vocab_size` is an error naming the size it
  reaches; nothing is left behind then."""
  from tokenizers import Tokenizer as HFTok  # noqa: PLC0415
  from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
  specials = ["<pad>", "<s>", "</s>"]
  tok = HFTok(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  reached = tok.get_vocab_size(with_added_tokens=True)
  if reached < vocab_size:
    raise ValueError(
        f"--vocab_size {vocab_size} is more than this corpus supports: training reached "
        f"{reached} tokens — give --vocab_size {reached} (or less), or train on more text")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "tokenizer.json")
  tok.save(path)
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f, indent=1)
  return path

def expand_globs(patterns: str | Sequence[str]) -> list[str]:
  """Comma-separated globs (or a list of them) -> sorted, de-duplicated files.

  A pattern starting with `!` excludes the files it matches (fnmatch, where `*`
  also crosses `/`), e.g. `corpus/**/*.txt,!corpus/heldout/*`. `gs://bucket/...`
  patterns list objects through etils.epath.
  """
  if isinstance(patterns, str):
    patterns = patterns.split(",")
  patterns = [os.path.expanduser(p.strip()) for p in patterns if p.strip()]
  include = [p for p in patterns if not p.startswith("!")]
  exclude = [p[1:] for p in patterns if p.startswith("!")]
  files = set()
  for pattern in include:
    if pattern.startswith("gs://"):  # objects in a bucket, listed through etils.epath
      from etils import epath  # noqa: PLC0415
      bucket, _, rest = pattern[len("gs://"):].partition("/")
      files.update(os.fspath(p) for p in epath.Path(f"gs://{bucket}").glob(rest)
                   if not p.is_dir())
      continue
    files.update(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  return sorted(f for f in files if not any(fnmatch.fnmatch(f, x) for x in exclude))
