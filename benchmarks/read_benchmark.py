"""Reading throughput of a prepared dataset on one host: tokens/s the grain pipeline
produces (shuffled window ids -> this process's rows -> ArrayRecord reads -> packed batch
with segment ids / positions / loss mask), against what the 1.1B step consumes on one
H100 (68,271 tokens/s, benchmarks/RESULTS.md).

A synthetic prepared dataset (random tokens, documents of geometric length, written with
`growjax.data.shards.write_shard` in the real format) is made in --dir first.

  python benchmarks/read_benchmark.py --windows 40000 --seq_len 2048 --batch 16 \
      --workers 0,2 --rows all,half
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

STEP_TOKENS_PER_S = 68_271  # 1b 24x2048 on one H100 (benchmarks/RESULTS.md)


def make_dataset(directory: str, windows: int, seq_len: int, per_shard: int,
                 mean_doc: int = 1000, vocab: int = 32000) -> None:
  from growjax.data import shards
  rng = np.random.default_rng(0)
  entries, start = [], 0
  for i, first in enumerate(range(0, windows, per_shard)):
    n = min(per_shard, windows - first)
    tokens = rng.integers(3, vocab, size=(n, seq_len + 1), dtype=np.int64)
    # Documents of geometric length: a BOS (1) at each document start.
    starts = rng.random(size=tokens.shape) < 1.0 / mean_doc
    tokens[starts] = 1
    info = shards.write_shard(os.path.join(directory, shards.shard_name("train", i)),
                              tokens, np.uint16, seq_len)
    entries.append({"file": shards.shard_name("train", i), "windows": n,
                    "tokens": n * seq_len, "documents": int(starts.sum()), **info})
    start += n
  index = {"format": shards.FORMAT, "seq_len": seq_len, "dtype": "uint16",
           "tokenizer": {"spec": "synthetic", "identity": "synthetic", "vocab_size": vocab,
                         "bos_id": 1, "eos_id": 2, "pad_id": 0},
           "sources": [], "text_key": "text",
           "splits": {"train": {"windows": windows, "tokens": windows * seq_len,
                                "documents": sum(e["documents"] for e in entries),
                                "shards": entries}}}
  shards.write_json(os.path.join(directory, shards.INDEX), index)


def measure(directory: str, seq_len: int, batch: int, workers: int, rows: str,
            batches: int) -> dict:
  from growjax import data
  cfg = data.default_data_config()
  cfg.prepared_dir, cfg.seq_len, cfg.num_workers = directory, seq_len, workers
  row_ids = np.arange(batch) if rows == "all" else np.arange(batch // 2)
  t0 = time.perf_counter()
  it = data.train_iterator(cfg, global_batch_size=batch, seed=0, rows=row_ids)
  first = next(it)
  startup = time.perf_counter() - t0
  for _ in range(3):
    next(it)
  t0, tokens = time.perf_counter(), 0
  for _ in range(batches):
    tokens += next(it)["inputs"].size
  tps = tokens / (time.perf_counter() - t0)
  assert set(first) == set(data.BATCH_KEYS)
  return {"workers": workers, "rows": rows, "startup_s": round(startup, 3),
          "tokens_per_s": round(tps), "headroom_vs_1b_h100": round(tps / STEP_TOKENS_PER_S, 1)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dir", default="")
  p.add_argument("--windows", type=int, default=40000)
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--per_shard", type=int, default=5000)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--workers", default="0,2")
  p.add_argument("--rows", default="all,half")
  a = p.parse_args()
  directory = a.dir or tempfile.mkdtemp(prefix="growjax-read-bench-")
  if not os.path.exists(os.path.join(directory, "index.json")):
    t0 = time.perf_counter()
    make_dataset(directory, a.windows, a.seq_len, a.per_shard)
    print(f"made {a.windows} windows x {a.seq_len + 1} in {time.perf_counter() - t0:.1f} s "
          f"-> {directory}")
  for w in (int(x) for x in a.workers.split(",")):
    for rows in a.rows.split(","):
      print(json.dumps(measure(directory, a.seq_len, a.batch, w, rows, a.batches)))


if __name__ == "__main__":
  main()
