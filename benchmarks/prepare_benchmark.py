"""Data preparation and reading throughput (issue 12), on the machine it runs on.

Generates a corpus of synthetic-word JSON-lines files (--sizes_gb, largest first; a
smaller size is a prefix of the same files), runs `growjax prepare-data` on it with
each --workers count as a subprocess, and reports:

- tokens/s overall and per worker, scaling from 1 to N workers;
- the peak RSS of the whole process tree (the command and its workers, sampled every
  50 ms from /proc through psutil), per corpus size;
- reading throughput of the prepared output on this host: windows/s and tokens/s through
  `shards.open_shards` (random access, 256 windows per call) and through the training
  iterator (`growjax.data.loader.train_iterator`: shuffle, batches with segment ids);
- optionally (--hf_sample_mb) the same preparation with a byte-level BPE tokenizer.json
  trained here on part of the corpus.

Everything it writes lives under --dir and is deleted at the end (--keep to keep it).

  nice -n 10 python benchmarks/prepare_benchmark.py --sizes_gb 2,0.5 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILE_BYTES = 128 << 20


def _words(rng, n: int) -> list[str]:
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  lengths = rng.integers(2, 10, n)
  return ["".join(rng.choice(letters, k)) for k in lengths]


def generate(root: str, total_bytes: int, seed: int = 0) -> list[str]:
  """JSON-lines files of FILE_BYTES each ({"text": doc}), docs of Zipf-distributed
  synthetic words, 200-8000 characters; returns the paths in order."""
  rng = np.random.default_rng(seed)
  vocab = np.array(_words(rng, 50_000))
  weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
  weights /= weights.sum()
  pool = []
  for _ in range(4000):  # a pool of documents, each line picks one with a fresh id
    n = int(rng.integers(40, 1500))
    words = vocab[rng.choice(len(vocab), n, p=weights)]
    text = " ".join(words)
    cut = rng.integers(5, 40, n // 10).cumsum()
    parts = np.split(np.array(text.split(" ")), cut[cut < n])
    pool.append(".\n".join(" ".join(p) for p in parts if len(p)))
  os.makedirs(root, exist_ok=True)
  paths, written, doc = [], 0, 0
  while written < total_bytes:
    path = os.path.join(root, f"part-{len(paths):05d}.jsonl")
    size = 0
    with open(path, "w") as f:
      while size < FILE_BYTES and written + size < total_bytes:
        line = json.dumps({"id": doc, "text": f"doc {doc}: " + pool[doc % len(pool)]}) + "\n"
        f.write(line)
        size += len(line)
        doc += 1
    paths.append(path)
    written += size
  return paths


def _watch(proc: subprocess.Popen, out: dict) -> None:
  """Peak RSS of `proc` and all its descendants, summed, every 50 ms; and the CPU
  seconds (user + system) each of them used, last seen."""
  peak, cpu = 0, {}
  try:
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
      total = 0
      for p in [root, *root.children(recursive=True)]:
        try:
          total += p.memory_info().rss
          t = p.cpu_times()
          cpu[p.pid] = t.user + t.system
        except psutil.Error:
          pass
      peak = max(peak, total)
      time.sleep(0.05)
  except psutil.Error:
    pass
  out["peak_rss"] = peak
  out["cpu_s"] = cpu


def run_prepare(files: list[str], valid: str, out: str, workers: int, seq_len: int,
                tokenizer: str = "byte", vocab: int = 32000) -> dict:
  args = [sys.executable, "-m", "growjax", "prepare-data",
          "--config", os.path.join(REPO, "configs", "tiny.py"), "--out", out,
          "--workers", str(workers), "--config.data.name=text_files",
          f"--config.data.train_files={','.join(files)}",
          f"--config.data.validation_files={valid}", f"--config.data.seq_len={seq_len}",
          f"--config.data.tokenizer={tokenizer}", f"--config.model.vocab_size={vocab}"]
  t0, load0 = time.time(), os.getloadavg()[0]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=REPO)
  stats: dict = {}
  watcher = threading.Thread(target=_watch, args=(proc, stats))
  watcher.start()
  stdout, stderr = proc.communicate()
  watcher.join()
  wall = time.time() - t0
  if proc.returncode:
    raise RuntimeError(f"prepare-data failed: {stderr}")
  with open(os.path.join(out, "index.json")) as f:
    index = json.load(f)
  tokens = sum(s["tokens"] for s in index["splits"].values())
  docs = sum(s["documents"] for s in index["splits"].values())
  text_bytes = sum(os.path.getsize(p) for p in files) + os.path.getsize(valid)
  cpu = stats.get("cpu_s", {})
  main_cpu = cpu.pop(proc.pid, 0.0)
  return {"workers": workers, "wall_s": wall, "tokens": tokens, "documents": docs,
          "cores_used": (main_cpu + sum(cpu.values())) / wall,
          "main_cpu_s": main_cpu, "worker_cpu_s": sorted(cpu.values(), reverse=True)[:workers],
          "tokens_per_worker_cpu_s": tokens / max(sum(cpu.values()) or main_cpu, 1e-9),
          "load_avg_1m": [load0, os.getloadavg()[0]],
          "tokens_per_s": tokens / wall, "mb_per_s": text_bytes / wall / 1e6,
          "peak_rss_gib": stats.get("peak_rss", 0) / 2**30,
          "shards": sum(len(s["shards"]) for s in index["splits"].values()),
          "progress": [l for l in stderr.splitlines() if "tokens/s" in l][-1:]}


def reading(out: str, seq_len: int, batch: int = 32, batches: int = 200) -> dict:
  sys.path.insert(0, REPO)
  from growjax.data import loader, shards  # noqa: PLC0415
  from growjax.data import config as data_config  # noqa: PLC0415
  src = shards.open_shards(out, "train")
  rng = np.random.default_rng(0)
  n = len(src)
  ids = rng.integers(0, n, 256 * 40)
  src.__getitems__(ids[:256].tolist())  # open the readers
  t0 = time.time()
  for k in range(0, len(ids), 256):
    src.__getitems__(ids[k:k + 256].tolist())
  dt = time.time() - t0
  random_windows = len(ids) / dt
  cfg = data_config.default_data_config()
  cfg.prepared_dir, cfg.seq_len = out, seq_len
  it = loader.train_iterator(cfg, global_batch_size=batch, seed=0)
  next(it)
  t0 = time.time()
  for _ in range(batches):
    next(it)
  dt = time.time() - t0
  it_windows = batch * batches / dt
  return {"random_windows_per_s": random_windows,
          "random_tokens_per_s": random_windows * seq_len,
          "iterator_windows_per_s": it_windows, "iterator_tokens_per_s": it_windows * seq_len,
          "batch": batch}


def main() -> None:
  global FILE_BYTES
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes_gb", default="2,0.5")
  ap.add_argument("--workers", default="1,2")
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--dir", default="/tmp/growjax-prepare-bench")
  ap.add_argument("--hf_sample_mb", type=float, default=0.0)
  ap.add_argument("--file_mb", type=float, default=128.0)
  ap.add_argument("--keep", action="store_true")
  ap.add_argument("--only_hf", action="store_true", help="skip the byte-tokenizer runs")
  args = ap.parse_args()
  FILE_BYTES = int(args.file_mb * 2**20)
  sizes = sorted((float(s) for s in args.sizes_gb.split(",")), reverse=True)
  workers = [int(w) for w in args.workers.split(",")]
  if os.path.exists(args.dir):
    raise SystemExit(f"{args.dir} exists — give another --dir (this script deletes what "
                     f"it writes, so it only writes into a new one)")
  results: dict = {"machine": f"{os.cpu_count()} CPU cores, "
                              f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
                   "runs": []}
  try:
    t0 = time.time()
    corpus = os.path.join(args.dir, "corpus")
    files = generate(corpus, int(sizes[0] * 1e9))
    valid = os.path.join(args.dir, "valid.jsonl")
    shutil.copy(files[-1], valid)
    files = files[:-1] if len(files) > 1 else files
    results["generate_s"] = time.time() - t0
    print(f"generated {sum(map(os.path.getsize, files)) / 1e9:.2f} GB in "
          f"{results['generate_s']:.0f} s", flush=True)
    for size in ([] if args.only_hf else sizes):
      take, acc = [], 0
      for f in files:
        if acc >= size * 1e9 - FILE_BYTES / 2:
          break
        take.append(f)
        acc += os.path.getsize(f)
      for w in workers:
        out = os.path.join(args.dir, f"out-{size}-{w}")
        r = run_prepare(take, valid, out, w, args.seq_len)
        r["corpus_gb"] = acc / 1e9
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
        if size == sizes[0] and w == workers[-1]:
          results["reading"] = reading(out, args.seq_len)
          print(json.dumps(results["reading"]), flush=True)
        elif not args.keep:
          shutil.rmtree(out)
    if args.hf_sample_mb:
      sys.path.insert(0, REPO)
      from growjax.data import formats, tokenizers  # noqa: PLC0415
      sample = os.path.join(args.dir, "sample.jsonl")
      with open(files[0], "rb") as src, open(sample, "wb") as dst:
        dst.write(src.read(int(args.hf_sample_mb * 1e6)).rsplit(b"\n", 1)[0] + b"\n")
      t0 = time.time()
      docs = formats.iter_documents(sample)
      tok = tokenizers.train_hf_bpe(docs, 8192, os.path.join(args.dir, "hf"))
      results["hf_train_s"] = time.time() - t0
      small_valid = os.path.join(args.dir, "sample_valid.jsonl")
      with open(valid, "rb") as src, open(small_valid, "wb") as dst:
        dst.write(src.read(1 << 20).rsplit(b"\n", 1)[0] + b"\n")
      for w in workers:
        r = run_prepare([sample], small_valid, os.path.join(args.dir, f"hf-{w}"), w,
                        args.seq_len, tokenizer=f"hf:{tok}", vocab=8192)
        r["tokenizer"] = "hf_bpe_8192"
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
  finally:
    if not args.keep:
      shutil.rmtree(args.dir, ignore_errors=True)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
