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

Here: the run itself (claim, check, tokenize, pack, index). Its parts, one concern each:
`prepare_sources` (splits, units, the text check), `prepare_workers` (the tokenizing
pool), `prepare_windows` (cutting the stream into windows), `prepare_output` (manifest,
claim, resume records).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from etils import epath

from growjax import faults
from growjax.data import formats, shards
from growjax.data.prepare_output import (MANIFEST, claim, completed_shards, read_json,
                                         remove_own_temporaries, state_path)
from growjax.data.prepare_sources import SplitSources, check_texts, split_sources, unit_weight
from growjax.data.prepare_windows import (Origins, assemble_window, count_documents,
                                          cut_windows, window_pieces)
from growjax.data.prepare_workers import (iter_unit_tokens, make_executor, ordered,
                                          sha256_of, tokenize_documents, tokenize_unit)
from growjax.data import tokenizer_record
from growjax.data.tokenizers import Tokenizer, make_tokenizer

# Used by the Beam builder and tests through this module.
__all__ = ["DEFAULT_SHARD_MB", "DEFAULT_UNIT_BYTES", "assemble_window", "check_vocab",
           "count_documents", "cut_windows", "iter_unit_tokens", "prepare",
           "shard_windows_for", "tokenize_documents", "window_pieces"]

DEFAULT_SHARD_MB = 256.0
DEFAULT_UNIT_BYTES = 8 << 20
_CHUNK_TOKENS = 1 << 22         # tokens packed per step in the main process


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


def _prepare_split(out: epath.Path, split: str, src: SplitSources, spec: str,
                   tok: Tokenizer, dtype: np.dtype, seq_len: int, shard_windows: int,
                   executor, in_flight: int, spill_dir: str, progress: _Progress) -> dict:
  done = completed_shards(out, split)
  final = read_json(state_path(out, f"{split}.done.json"))
  if final is not None and len(done) == final["shards"]:
    return _split_summary(done)
  first_unit, skip = done[-1]["next"] if done else (0, 0)
  if first_unit is None:  # the last shard was written; only the marker is missing
    shards.write_json(state_path(out, f"{split}.done.json"), {"shards": len(done)})
    return _split_summary(done)
  progress.add(0, 0, sum(unit_weight(u) for u in src.units[:first_unit]), split)

  writer: shards.ShardWriter | None = None
  shard_docs = 0
  carry, origins = np.zeros(0, dtype), Origins()

  def commit(next_cursor) -> None:
    nonlocal writer, shard_docs
    j = len(done)
    name = shards.shard_name(split, j)
    # Counts first, then the shard: a present shard always has its record.
    info = writer.close()
    record = {"file": name, "windows": writer.windows, "tokens": writer.windows * seq_len,
              "documents": shard_docs, **info, "next": list(next_cursor)}
    shards.write_json(state_path(out, name + ".json"), record)
    faults.maybe_kill("mid_prepare")  # a shard's record written, the shard not yet in place
    writer.publish()
    done.append(record)
    writer, shard_docs = None, 0

  tasks = ((tokenize_unit, src.units[u], spec, dtype.name, spill_dir, u)
           for u in range(first_unit, len(src.units)))
  for u, (path, n_tokens, n_docs) in zip(range(first_unit, len(src.units)),
                                         ordered(executor, tasks, in_flight)):
    tokens = np.fromfile(path, dtype=dtype) if n_tokens else np.zeros(0, dtype)
    os.remove(path)
    start = skip if u == first_unit else 0
    for a in range(start, len(tokens), _CHUNK_TOKENS):
      chunk = tokens[a:a + _CHUNK_TOKENS]
      buf = np.concatenate([carry, chunk])
      here = Origins(origins.segments + [(u, a, len(chunk))])
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
    progress.add(n_docs, n_tokens, unit_weight(src.units[u]), split)
  if writer is not None:
    commit((None, 0))
  shards.write_json(state_path(out, f"{split}.done.json"), {"shards": len(done)})
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
  started = read_json(state_path(out, MANIFEST)) if out.exists() else None
  if started and started.get("unit_bytes"):
    unit_bytes = int(started["unit_bytes"])  # a resume cuts the units the start cut
  splits = {s: split_sources(data_cfg, s, unit_bytes) for s in shards.SPLITS}
  splits = {s: v for s, v in splits.items() if v is not None}
  manifest = {"format": shards.FORMAT, "seq_len": seq_len, "tokenizer": tok.identity,
              "text_key": data_cfg.text_key, "shard_windows": shard_windows,
              "unit_bytes": int(unit_bytes),
              "sources": {s: [list(f) for f in v.fingerprint] for s, v in splits.items()}}
  state = claim(out, manifest)
  if state == "done":
    index = shards.read_index(out)
    shards.check_shards(out, index)  # one listing: a missing, empty or truncated shard
    if verify:
      n = shards.verify_shards(out, index)
      log(f"prepare-data: {out}: {n} shards verified against their sha256.")
    log(f"prepare-data: {out} is already prepared ({out / shards.INDEX}); nothing to do.")
    return index
  executor = make_executor(workers)
  spill_dir = tempfile.mkdtemp(prefix="growjax-prepare-")
  # --workers N means N cores tokenizing: in-process too, the Rust tokenizers stay on
  # one thread (read at each call), as they do in the worker processes.
  parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  try:
    check_texts(data_cfg, splits, executor, 2 * workers, log)  # before anything is written
    if state == "new":
      shards.write_json(state_path(out, MANIFEST), manifest)
    else:
      log(f"prepare-data: resuming the preparation in {out}")
      remove_own_temporaries(out)
    total = sum(unit_weight(u) for v in splits.values() for u in v.units)
    progress = _Progress(log, total)
    summaries = {}
    for split, src in splits.items():
      summaries[split] = _prepare_split(out, split, src, spec, tok, dtype, seq_len,
                                        shard_windows, executor, 2 * workers, spill_dir,
                                        progress)
    files = sorted({f for v in splits.values() for f in v.files})
    hashes = list(ordered(executor, ((sha256_of, f) for f in files), 2 * workers))
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
           "tokenizer": tokenizer_record.keep_files(tokenizer_record.describe(spec, tok),
                                                    out / tokenizer_record.FOLDER),
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
