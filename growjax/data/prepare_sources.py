"""What `growjax prepare-data` reads: each split's files (or tfds split) and its units of
work, cut from metadata so 1 and N workers agree, and the text check that reads every
source file once for UTF-8 / binary content before anything is written."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from growjax.data import formats
from growjax.data.prepare_workers import ordered
from growjax.data.tokenizers import expand_globs


@dataclasses.dataclass(frozen=True)
class SplitSources:
  """What one split is made of: its files (or a tfds split) and its units."""
  files: tuple[str, ...]
  units: tuple[formats.Unit, ...]
  fingerprint: tuple  # (path, bytes, mtime_ns) per file, or the tfds coordinates


def split_sources(data_cfg, split: str, unit_bytes: int) -> SplitSources | None:
  """The sources of 'train' / 'validation' per `config.data.name`; None: no such split."""
  name = data_cfg.name
  if name == "shakespeare":
    files = formats.shakespeare_files(split)
    units = tuple(formats.Unit("markdown_play", (f,)) for f in files)
  elif name == "tfds":
    from growjax.data import sources  # noqa: PLC0415
    tfds_split = data_cfg.train_split if split == "train" else data_cfg.validation_split
    data_dir = sources.resolve_data_dir(data_cfg.data_dir)
    if split == "validation" and not tfds_split:
      return None
    units = tuple(formats.plan_tfds_units(data_cfg.tfds_name, tfds_split, data_dir,
                                          data_cfg.text_key, invalid_utf8=invalid_utf8_mode(data_cfg)))
    return SplitSources((), units, (("tfds", data_cfg.tfds_name, tfds_split, data_dir,
                                     units[-1].end if units else 0),))
  elif name == "text_files":
    field = "train_files" if split == "train" else "validation_files"
    patterns = data_cfg[field]
    if not patterns:
      if split == "validation":
        return None
      raise ValueError("config.data.train_files is empty — give comma-separated globs of "
                       "the corpus (.txt, .md, .jsonl, .jsonl.gz, .parquet).")
    files = [p if p.startswith("gs://") else os.path.abspath(p)
             for p in expand_globs(patterns)]
    if not files:
      raise ValueError(f"config.data.{field}={patterns!r} matches no file — check the "
                       f"path (globs are expanded from {os.getcwd()!r}).")
    formats.check_sources(files, data_cfg.text_key, invalid_utf8_mode(data_cfg))
    units = tuple(formats.plan_units(files, data_cfg.text_key, unit_bytes, invalid_utf8_mode(data_cfg)))
  else:
    raise ValueError(f"config.data.name={name!r} cannot be prepared — use 'shakespeare', "
                     f"'text_files' or 'tfds'.")
  fingerprint = tuple((f, *formats.file_stat(f)) for f in files)
  return SplitSources(tuple(files), units, fingerprint)


def invalid_utf8_mode(data_cfg) -> str:
  """config.data.invalid_utf8 (absent in configs saved before the field: 'error')."""
  return formats.check_mode(data_cfg.get("invalid_utf8", "error"))


def check_texts(data_cfg, splits: dict, executor, in_flight: int,
                 log: Callable[[str], None]) -> None:
  """Every source file read once for UTF-8 / binary (`formats.check_text`) over the
  workers, in file order, so the first bad file is the one named; in 'replace' mode, one
  line counting what will be replaced."""
  files = sorted({f for v in splits.values() for f in v.files
                  if not any(u.kind == "markdown_play" for u in v.units)})
  mode = invalid_utf8_mode(data_cfg)
  tasks = ((formats.check_text, f, data_cfg.text_key, mode) for f in files)
  counts = [n for _, n in ordered(executor, tasks, in_flight)]
  if mode == "replace":
    log(f"prepare-data: replaced {sum(counts):,} invalid UTF-8 sequences in "
        f"{sum(1 for n in counts if n)} files with U+FFFD")


def unit_weight(unit: formats.Unit) -> float:
  """Roughly the bytes of text a unit holds: the progress line's ETA."""
  if unit.kind == "jsonl":
    return unit.end - unit.start
  if unit.kind == "tfds":
    return unit.end - unit.start
  if unit.kind == "parquet":
    return formats._parquet(unit.paths[0]).metadata.row_group(  # noqa: SLF001
        unit.start).total_byte_size
  return sum(formats.file_stat(p)[0] for p in unit.paths)
