"""Offline preparation: a config's sources -> tokenized, packed, sharded ArrayRecord.

`prepare(data_cfg, out_dir, workers=N)` (and `growjax prepare-data`) reads the sources
`config.data` names (`growjax.data.formats`), tokenizes them over N worker processes,
packs each split into one stream `BOS doc EOS BOS doc EOS ...`, cuts windows of
`seq_len + 1` tokens (stride `seq_len`) and writes them as shards of `shard_windows`
windows plus index.json (`growjax.data.shards` is the format).

- Deterministic: units of work are cut from file metadata (`formats.plan_units`), the
  workers' results are consumed in unit order, and shard boundaries are fixed window
  counts of the split's stream; 1 and N workers write byte-identical shards.
- Bounded memory whatever the corpus: at most `2 * workers` units are in flight, each
  about `unit_bytes` of text; a worker spills a unit's tokens to a local file which the
  main process packs chunk by chunk.
- Resumable: before shard j is renamed into place, `<out>/.prepare/<split>-<j>.json`
  records its counts and where the stream after it starts (unit, token offset). A rerun
  after a kill keeps the shards present (checked against those records), restarts at the
  unit holding the first missing window, and writes only the missing shards.
- Text is checked first: every source file is read once for UTF-8 and binary content
  (`formats.check_text`, over the workers) before the manifest or any shard is written;
  invalid UTF-8 is refused naming file and byte unless `config.data.invalid_utf8` is
  'replace', which prints how many sequences became U+FFFD.
- Safe: `<out>/.prepare/manifest.json` says what is being prepared (sources with sizes
  and mtimes, tokenizer identity, seq_len, shard layout); an output dir holding another
  dataset, or files this command did not write, is refused, and nothing is deleted or
  overwritten that this command did not create. The vocabulary is checked against the
  model's before anything is read.

This module does not read windows back for training (see `growjax.data.reader`) and has
no distributed runner of its own: corpora past one machine go through the tfds/Beam
builder in `growjax.data.beam_prepare`, which calls the same packing functions.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np
from etils import epath

from growjax import faults
from growjax import lease
from growjax.data import formats, shards
from growjax.data.tokenizers import Tokenizer, expand_globs, make_tokenizer

STATE_DIR = ".prepare"
MANIFEST = "manifest.json"
DEFAULT_SHARD_MB = 256.0
DEFAULT_UNIT_BYTES = 8 << 20
_ENCODE_BATCH_BYTES = 1 << 20   # documents handed to encode_batch at once
_CHUNK_TOKENS = 1 << 22         # tokens packed per step in the main process


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class SplitSources:
  """What one split is made of: its files (or a tfds split) and its units."""
  files: tuple[str, ...]
  units: tuple[formats.Unit, ...]
  fingerprint: tuple  # (path, bytes, mtime_ns) per file, or the tfds coordinates


def _split_sources(data_cfg, split: str, unit_bytes: int) -> SplitSources | None:
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
                                          data_cfg.text_key, invalid_utf8=_mode(data_cfg)))
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
    formats.check_sources(files, data_cfg.text_key, _mode(data_cfg))
    units = tuple(formats.plan_units(files, data_cfg.text_key, unit_bytes, _mode(data_cfg)))
  else:
    raise ValueError(f"config.data.name={name!r} cannot be prepared — use 'shakespeare', "
                     f"'text_files' or 'tfds'.")
  fingerprint = tuple((f, *formats.file_stat(f)) for f in files)
  return SplitSources(tuple(files), units, fingerprint)


def _mode(data_cfg) -> str:
  """config.data.invalid_utf8 (absent in configs saved before the field: 'error')."""
  return formats.check_mode(data_cfg.get("invalid_utf8", "error"))


def _check_texts(data_cfg, splits: dict, executor, in_flight: int,
                 log: Callable[[str], None]) -> None:
  """Every source file read once for UTF-8 / binary (`formats.check_text`) over the
  workers, in file order, so the first bad file is the one named; in 'replace' mode, one
  line counting what will be replaced."""
  files = sorted({f for v in splits.values() for f in v.files
                  if not any(u.kind == "markdown_play" for u in v.units)})
  mode = _mode(data_cfg)
  tasks = ((formats.check_text, f, data_cfg.text_key, mode) for f in files)
  counts = [n for _, n in _ordered(executor, tasks, in_flight)]
  if mode == "replace":
    log(f"prepare-data: replaced {sum(counts):,} invalid UTF-8 sequences in "
        f"{sum(1 for n in counts if n)} files with U+FFFD")


def _unit_weight(unit: formats.Unit) -> float:
  """Roughly the bytes of text a unit holds: the progress line's ETA."""
  if unit.kind == "jsonl":
    return unit.end - unit.start
  if unit.kind == "tfds":
    return unit.end - unit.start
  if unit.kind == "parquet":
    return formats._parquet(unit.paths[0]).metadata.row_group(  # noqa: SLF001
        unit.start).total_byte_size
  return sum(formats.file_stat(p)[0] for p in unit.paths)


# ------------------------------------------------------------------------------ workers

_TOKENIZERS: dict[str, Tokenizer] = {}


def _tokenizer(spec: str) -> Tokenizer:
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


def _tokenize_unit(unit: formats.Unit, spec: str, dtype: str, spill_dir: str,
                   number: int) -> tuple[str, int, int]:
  """Worker task: tokenizes one unit into a spill file; returns (path, tokens, docs)."""
  tok = _tokenizer(spec)
  path = os.path.join(spill_dir, f"unit-{number:08d}.tokens")
  tokens = docs = 0
  with open(path, "wb") as f:
    for ids, n in iter_unit_tokens(unit, tok, dtype):
      f.write(ids.tobytes())
      tokens, docs = tokens + len(ids), docs + n
  return path, tokens, docs


def _sha256(path: str) -> str:
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


def _executor(workers: int):
  if workers <= 1:
    return _InProcess()
  # spawn: the parent may hold threads (absl, grain, jax) that fork would copy half-held.
  return futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(os.getpid(),))


def _ordered(executor, tasks: Iterator[tuple], in_flight: int) -> Iterator:
  """Results of `tasks` (fn, *args) in submission order, at most `in_flight` pending."""
  pending: collections.deque = collections.deque()
  for task in tasks:
    pending.append(executor.submit(*task))
    if len(pending) >= in_flight:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


# ------------------------------------------------------------------------------ packing


def cut_windows(buf: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
  """The full windows of `buf` (n, seq_len + 1), stride seq_len (a view), and n."""
  n = (len(buf) - 1) // seq_len if len(buf) > seq_len else 0
  if n == 0:
    return buf[:0].reshape(0, seq_len + 1), 0
  view = np.lib.stride_tricks.sliding_window_view(buf[:n * seq_len + 1], seq_len + 1)
  return view[::seq_len], n


def count_documents(windows: np.ndarray, bos_id: int, eos_id: int) -> int:
  """Documents starting in `windows`' inputs (BOS tokens; halved when BOS is also EOS)."""
  n = int(np.count_nonzero(windows[:, :-1] == bos_id))
  return (n + 1) // 2 if bos_id == eos_id else n


def window_pieces(start: int, tokens: np.ndarray, seq_len: int,
                  total: int) -> Iterator[tuple[int, int, np.ndarray]]:
  """The parts of full windows that `tokens` (stream positions [start, start + len))
  holds: (window id, offset in the window, tokens). Window w is stream[w*T : w*T + T + 1]
  of a stream of `total` tokens (the partial last window is dropped). The Beam builder
  cuts windows this way, in parallel, where `prepare` cuts them in order."""
  n = (total - 1) // seq_len if total > seq_len else 0
  end = start + len(tokens)
  if n == 0 or end <= start:
    return
  lo = max(0, (start - 1) // seq_len)
  hi = min(n - 1, (end - 1) // seq_len)
  for w in range(lo, hi + 1):
    a, b = max(start, w * seq_len), min(end, w * seq_len + seq_len + 1)
    if a < b:
      yield w, a - w * seq_len, tokens[a - start:b - start]


def assemble_window(pieces, seq_len: int, dtype) -> np.ndarray:
  """One window from its `window_pieces` (offset, tokens), in any order."""
  out = np.empty(seq_len + 1, dtype)
  filled = 0
  for offset, piece in pieces:
    out[offset:offset + len(piece)] = piece
    filled += len(piece)
  if filled != seq_len + 1:
    raise AssertionError(f"a window got {filled} tokens, not {seq_len + 1}")
  return out


class _Origins:
  """Which (unit, token offset) each position of the packing buffer came from."""

  def __init__(self, segments=()):
    self.segments = list(segments)  # (unit, offset, length), in buffer order

  def locate(self, pos: int) -> tuple[int, int]:
    for unit, offset, length in self.segments:
      if pos < length:
        return unit, offset + pos
      pos -= length
    raise AssertionError("position past the buffer")

  def tail(self, pos: int) -> "_Origins":
    out = []
    for unit, offset, length in self.segments:
      if pos >= length:
        pos -= length
        continue
      out.append((unit, offset + pos, length - pos))
      pos = 0
    return _Origins(out)


# --------------------------------------------------------------------------- the output


def _state_path(out: epath.Path, name: str) -> epath.Path:
  return out / STATE_DIR / name


def _read_json(path: epath.Path):
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except json.JSONDecodeError as e:
    what = ("index" if path.name == shards.INDEX else "progress record")
    raise ValueError(f"{path} is not valid JSON ({e}) — growjax prepare-data's {what} is "
                     f"damaged: delete it and rerun the same command.") from None


def _without_units(manifest: dict) -> dict:
  return {k: v for k, v in manifest.items() if k != "unit_bytes"}


def _claim(out: epath.Path, manifest: dict) -> str:
  """'new' | 'resume' | 'done': may this preparation write into `out`? Refuses another
  dataset's output, or a directory holding files this command did not write."""
  index = _read_json(out / shards.INDEX) if out.exists() else None
  mine = _read_json(_state_path(out, MANIFEST)) if out.exists() else None
  fix = (f"give another --out (or config.data.prepared_dir), or delete {out} yourself if "
         f"it is no longer needed")
  if index is not None:
    prep = index.get("preparation")
    # Units only say how the work was cut (a resume needs them); the shards do not
    # depend on them, so a finished output is the same dataset whatever unit_bytes was.
    if prep is not None and _without_units(prep) == _without_units(manifest):
      return "done"
    old = prep or {"tokenizer": index.get("tokenizer", {}).get("identity"),
                   "seq_len": index.get("seq_len")}
    diff = [k for k in ("sources", "tokenizer", "seq_len", "text_key", "shard_windows")
            if old.get(k) != manifest.get(k)]
    raise ValueError(f"{out} already holds a prepared dataset ({out / shards.INDEX}) of "
                     f"other {', '.join(diff) or 'settings'} — {fix}.")
  if mine is not None:
    if mine != manifest:
      diff = [k for k in manifest if mine.get(k) != manifest.get(k)]
      raise ValueError(f"{out} holds a partial preparation of another dataset (its "
                       f"{', '.join(diff)} differ, {_state_path(out, MANIFEST)}) — rerun "
                       f"with the config that started it to finish it, or {fix}.")
    return "resume"
  if out.exists():
    foreign = [p.name for p in out.iterdir() if not lease.is_lease_file(p.name)]
    if foreign:
      raise ValueError(f"{out} is not empty ({', '.join(sorted(foreign)[:3])}"
                       f"{', ...' if len(foreign) > 3 else ''}) and is not a growjax "
                       f"prepare-data output — {fix}.")
  return "new"


def _remove_own_temporaries(out: epath.Path) -> None:
  """The temporary files killed runs of this preparation left on this host
  (`shards.temporary_prefix` names of processes that are gone, in a directory whose
  manifest is ours): never a shard, never a running process's file."""
  for folder in (out, out / STATE_DIR):
    if folder.exists():
      for p in folder.iterdir():
        if shards.is_stale_temporary(p.name):
          p.unlink()


@dataclasses.dataclass
class _Progress:
  """The progress line: documents, tokens, tokens/s, ETA, printed every few seconds."""
  log: Callable[[str], None]
  total_weight: float
  every_s: float = 5.0
  docs: int = 0
  tokens: int = 0
  weight: float = 0.0
  start: float = dataclasses.field(default_factory=time.time)
  last: float = dataclasses.field(default_factory=time.time)

  def add(self, docs: int, tokens: int, weight: float, split: str, force=False) -> None:
    self.docs, self.tokens, self.weight = self.docs + docs, self.tokens + tokens, (
        self.weight + weight)
    now = time.time()
    if not force and now - self.last < self.every_s:
      return
    self.last = now
    dt = max(now - self.start, 1e-9)
    frac = self.weight / self.total_weight if self.total_weight else 1.0
    eta = dt * (1 - frac) / frac if frac > 0 else float("nan")
    eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
    self.log(f"prepare-data: {split}: {self.docs:,} documents, {self.tokens:,} tokens, "
             f"{self.tokens / dt / 1e6:.2f}M tokens/s, {100 * frac:.0f}% done, ETA {eta_s}")


def _completed(out: epath.Path, split: str) -> list[dict]:
  """The records of shards 0..k-1 present and consistent, in order."""
  done = []
  present = {p.name: p for p in out.iterdir()} if out.exists() else {}
  while True:
    name = shards.shard_name(split, len(done))
    record = _read_json(_state_path(out, name + ".json"))
    if record is None or name not in present:
      return done
    size = int(present[name].stat().length)
    if size != int(record["bytes"]):
      raise ValueError(
          f"shard {out / name} is {'empty' if size == 0 else f'{size} bytes'} where this "
          f"preparation wrote {record['bytes']} — it was damaged after it was written: "
          f"delete it and rerun the same command (only missing shards are written).")
    done.append(record)


def _prepare_split(out: epath.Path, split: str, src: SplitSources, spec: str,
                   tok: Tokenizer, dtype: np.dtype, seq_len: int, shard_windows: int,
                   executor, in_flight: int, spill_dir: str, progress: _Progress) -> dict:
  done = _completed(out, split)
  final = _read_json(_state_path(out, f"{split}.done.json"))
  if final is not None and len(done) == final["shards"]:
    return _split_summary(done)
  first_unit, skip = done[-1]["next"] if done else (0, 0)
  if first_unit is None:  # the last shard was written; only the marker is missing
    shards.write_json(_state_path(out, f"{split}.done.json"), {"shards": len(done)})
    return _split_summary(done)
  progress.add(0, 0, sum(_unit_weight(u) for u in src.units[:first_unit]), split)

  writer: shards.ShardWriter | None = None
  shard_docs = 0
  carry, origins = np.zeros(0, dtype), _Origins()

  def commit(next_cursor) -> None:
    nonlocal writer, shard_docs
    j = len(done)
    name = shards.shard_name(split, j)
    # Counts first, then the shard: a present shard always has its record.
    info = writer.close()
    record = {"file": name, "windows": writer.windows, "tokens": writer.windows * seq_len,
              "documents": shard_docs, **info, "next": list(next_cursor)}
    shards.write_json(_state_path(out, name + ".json"), record)
    faults.maybe_kill("mid_prepare")  # a shard's record written, the shard not yet in place
    writer.publish()
    done.append(record)
    writer, shard_docs = None, 0

  tasks = ((_tokenize_unit, src.units[u], spec, dtype.name, spill_dir, u)
           for u in range(first_unit, len(src.units)))
  for u, (path, n_tokens, n_docs) in zip(range(first_unit, len(src.units)),
                                         _ordered(executor, tasks, in_flight)):
    tokens = np.fromfile(path, dtype=dtype) if n_tokens else np.zeros(0, dtype)
    os.remove(path)
    start = skip if u == first_unit else 0
    for a in range(start, len(tokens), _CHUNK_TOKENS):
      chunk = tokens[a:a + _CHUNK_TOKENS]
      buf = np.concatenate([carry, chunk])
      here = _Origins(origins.segments + [(u, a, len(chunk))])
      windows, n = cut_windows(buf, seq_len)
      i = 0
      while i < n:
        if writer is None:
          writer = shards.ShardWriter(out / shards.shard_name(split, len(done)), dtype,
                                      seq_len)
        take = min(n - i, shard_windows - writer.windows)
        block = windows[i:i + take]
        writer.write_many(block)
        shard_docs += count_documents(block, tok.bos_id, tok.eos_id)
        i += take
        if writer.windows == shard_windows:
          commit(here.locate(i * seq_len))
      carry, origins = buf[n * seq_len:].copy(), here.tail(n * seq_len)
    progress.add(n_docs, n_tokens, _unit_weight(src.units[u]), split)
  if writer is not None:
    commit((None, 0))
  shards.write_json(_state_path(out, f"{split}.done.json"), {"shards": len(done)})
  return _split_summary(done)


def _split_summary(done: list[dict]) -> dict:
  keep = ("file", "windows", "tokens", "documents", "bytes", "sha256")
  listed = [{k: r[k] for k in keep} for r in done]
  return {"windows": sum(r["windows"] for r in listed),
          "tokens": sum(r["tokens"] for r in listed),
          "documents": sum(r["documents"] for r in listed), "shards": listed}


# ------------------------------------------------------------------------------ prepare


def check_vocab(tok: Tokenizer, spec: str, vocab_size: int | None) -> None:
  if vocab_size is not None and tok.vocab_size > int(vocab_size):
    raise ValueError(
        f"config.data.tokenizer={spec!r} has {tok.vocab_size:,} tokens, more than "
        f"config.model.vocab_size={int(vocab_size):,} — raise config.model.vocab_size to "
        f"at least {tok.vocab_size} (or use a tokenizer that fits the model).")


def shard_windows_for(shard_mb: float, seq_len: int, dtype) -> int:
  """Windows per shard so that a shard holds about `shard_mb` MB of tokens."""
  return max(1, int(shard_mb * (1 << 20)) // ((seq_len + 1) * np.dtype(dtype).itemsize))


def prepare(data_cfg, out_dir: str, *, workers: int = 1, vocab_size: int | None = None,
            shard_mb: float = DEFAULT_SHARD_MB, shard_windows: int | None = None,
            unit_bytes: int = DEFAULT_UNIT_BYTES, verify: bool = False,
            log: Callable[[str], None] | None = None) -> dict:
  """Prepares `config.data`'s sources into `out_dir`; returns the index written.

  A finished output of the same sources, tokenizer and layout is a no-op; a partial one
  is finished; `verify` then reads every shard back against its sha256. `vocab_size`
  (the model's) is checked before anything is read."""
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  if workers < 1:
    raise ValueError(f"--workers={workers} must be at least 1.")
  spec, seq_len = data_cfg.tokenizer, int(data_cfg.seq_len)
  if seq_len <= 0:
    raise ValueError(f"config.data.seq_len must be positive, got {seq_len}.")
  tok = make_tokenizer(spec)
  check_vocab(tok, spec, vocab_size)
  dtype = shards.window_dtype(tok.vocab_size)
  shard_windows = int(shard_windows or shard_windows_for(shard_mb, seq_len, dtype))
  out = epath.Path(out_dir)
  started = _read_json(_state_path(out, MANIFEST)) if out.exists() else None
  if started and started.get("unit_bytes"):
    unit_bytes = int(started["unit_bytes"])  # a resume cuts the units the start cut
  splits = {s: _split_sources(data_cfg, s, unit_bytes) for s in shards.SPLITS}
  splits = {s: v for s, v in splits.items() if v is not None}
  manifest = {"format": shards.FORMAT, "seq_len": seq_len, "tokenizer": tok.identity,
              "text_key": data_cfg.text_key, "shard_windows": shard_windows,
              "unit_bytes": int(unit_bytes),
              "sources": {s: [list(f) for f in v.fingerprint] for s, v in splits.items()}}
  state = _claim(out, manifest)
  if state == "done":
    index = shards.read_index(out)
    shards.check_shards(out, index)  # one listing: a missing, empty or truncated shard
    if verify:
      n = shards.verify_shards(out, index)
      log(f"prepare-data: {out}: {n} shards verified against their sha256.")
    log(f"prepare-data: {out} is already prepared ({out / shards.INDEX}); nothing to do.")
    return index
  executor = _executor(workers)
  spill_dir = tempfile.mkdtemp(prefix="growjax-prepare-")
  # --workers N means N cores tokenizing: in-process too, the Rust tokenizers stay on
  # one thread (read at each call), as they do in the worker processes.
  parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  try:
    _check_texts(data_cfg, splits, executor, 2 * workers, log)  # before anything is written
    if state == "new":
      shards.write_json(_state_path(out, MANIFEST), manifest)
    else:
      log(f"prepare-data: resuming the preparation in {out}")
      _remove_own_temporaries(out)
    total = sum(_unit_weight(u) for v in splits.values() for u in v.units)
    progress = _Progress(log, total)
    summaries = {}
    for split, src in splits.items():
      summaries[split] = _prepare_split(out, split, src, spec, tok, dtype, seq_len,
                                        shard_windows, executor, 2 * workers, spill_dir,
                                        progress)
    files = sorted({f for v in splits.values() for f in v.files})
    hashes = list(_ordered(executor, ((_sha256, f) for f in files), 2 * workers))
  finally:
    executor.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(spill_dir, ignore_errors=True)
    if parallelism is None:
      os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
      os.environ["TOKENIZERS_PARALLELISM"] = parallelism
  progress.add(0, 0, 0, "all", force=True)
  sources = [{"path": f, "bytes": formats.file_stat(f)[0], "sha256": h}
             for f, h in zip(files, hashes)]
  for split, v in splits.items():
    if not v.files:  # a tfds split: named by its coordinates
      sources.append({"path": "tfds:" + "/".join(map(str, v.fingerprint[0][1:4])),
                      "bytes": None, "sha256": None})
  index = {"format": shards.FORMAT, "seq_len": seq_len, "dtype": dtype.name,
           "tokenizer": {"spec": spec, "identity": tok.identity,
                         "vocab_size": int(tok.vocab_size), "bos_id": int(tok.bos_id),
                         "eos_id": int(tok.eos_id), "pad_id": int(tok.pad_id)},
           "sources": sources, "text_key": data_cfg.text_key, "splits": summaries,
           "preparation": manifest}
  for split, s in summaries.items():
    if s["windows"] == 0:
      log(f"prepare-data: warning: split {split!r} holds less than one window of "
          f"seq_len {seq_len}; it is empty.")
  shards.write_json(out / shards.INDEX, index)
  log(f"prepare-data: wrote {out / shards.INDEX}: " + ", ".join(
      f"{s} {v['windows']:,} windows / {len(v['shards'])} shards"
      for s, v in summaries.items()))
  return index
