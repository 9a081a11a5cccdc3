"""Builds the Python-source corpus of the larger replica point (configs/repro/larger.py):
every `.py` file of the permissively licensed packages installed beside growjax, plus
CPython's standard library, deduplicated, as one deterministic tarball.

  GROWJAX_STDLIB_DIR=/tmp/py311 python benchmarks/make_pycorpus.py
  # -> .pycorpus/pycorpus.tar.xz (pycorpus/{train,validation}/PACKAGE/..., MANIFEST.tsv)
  #    and configs/repro/larger_corpus_manifest.tsv (the same MANIFEST, committed)
  mkdir -p /tmp/pyc && tar xJf .pycorpus/pycorpus.tar.xz -C /tmp/pyc
  export GROWJAX_PYCORPUS_DIR=/tmp/pyc/pycorpus   # growjax.data.corpora.python_packages

What goes in:
- every distribution in `--site_packages` (default: this Python's) whose licence metadata
  (License-Expression, licence classifiers, else a one-line License field) names a
  permissive licence (MIT, BSD, Apache, PSF, ISC, Zlib, HPND, ...) and no copyleft one
  (GPL / LGPL / AGPL / MPL / EPL ...: those packages, e.g. chardet, are listed in the
  MANIFEST as excluded, with the reason); a distribution with no licence metadata is
  excluded too;
- the standard library under `$GROWJAX_STDLIB_DIR` (PSF; the replica's CPython 3.11.7
  tree, .stdlib/py311.tar.xz), as package `stdlib`.

Files: only the distribution's own `.py` files (its RECORD), UTF-8 and non-empty, at most
`--max_file_bytes` (larger ones are generated tables, not code). Identical files are
kept once (by content hash; validation first, so no held-out file is also trained on).
Held out as validation: whole packages (HELD_OUT, ~2% of the bytes). The tarball is
byte-identical for the same inputs (sorted members, zero mtimes and owners).

This script does not tokenize; `growjax tokenizer` and the inline preparation do.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import io
import os
import re
import sys
import sysconfig
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Whole packages held out (~2% of the bytes): the replica's two stdlib packages, plus
# libraries that no other package here vendors (pip vendors rich, urllib3, ...).
HELD_OUT = ("stdlib/email", "stdlib/asyncio", "optax", "joblib", "treescope", "pendulum")
STDLIB_VERSION = "3.11.7"
_COPYLEFT = re.compile(r"GPL|\bGNU\b|\bMPL\b|Mozilla Public|\bEUPL\b|\bEPL\b|\bCDDL\b|copyleft", re.I)
_PERMISSIVE = re.compile(r"MIT|BSD|Apache|PSF|Python Software Foundation|ISC|Zlib|HPND|"
                         r"CC0|Unlicense|CNRI|AFL|Historical Permission", re.I)
# Never in the corpus whatever their licence: this project itself.
_SKIP_DISTS = {"growjax"}


def licence(dist: md.Distribution) -> str:
  """The licence the metadata declares: License-Expression, else the licence
  classifiers, else the License field (its title line when it holds a full text)."""
  m = dist.metadata
  if m.get("License-Expression"):
    return m["License-Expression"].strip()
  classifiers = [c.split("::")[-1].strip() for c in m.get_all("Classifier") or []
                 if c.startswith("License ::")]
  if classifiers:
    return "; ".join(classifiers)
  text = (m.get("License") or "").strip()
  if "\n" not in text:
    return text
  # A full licence text: its title line names it ('MIT License', 'Apache License'),
  # unless the text mentions a copyleft licence anywhere (then that is what counts).
  copyleft = _COPYLEFT.search(text)
  return f"{text.splitlines()[0].strip()} (full text)" + (
      f", mentions {copyleft.group(0)}" if copyleft else "")


def licence_verdict(text: str) -> str:
  """'' when `text` names a permissive licence and no copyleft one, else the reason."""
  if not text:
    return "no licence metadata"
  if _COPYLEFT.search(text):
    return "copyleft licence"
  if not _PERMISSIVE.search(text):
    return "licence not recognised as permissive"
  return ""


def _held_out(split_key: str) -> bool:
  return any(split_key == h or split_key.startswith(h + "/") for h in HELD_OUT)


def collect(site: str, stdlib: str, max_file_bytes: int):
  """-> (members [(split, package, relpath, bytes)], rows for the MANIFEST)."""
  units = []  # (package, version, licence, [(relpath, abspath)])
  std_files = []
  for d, dirs, files in os.walk(stdlib):
    dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages",
                                                  "__pycache__"))
    std_files += [(os.path.relpath(os.path.join(d, f), stdlib), os.path.join(d, f))
                  for f in sorted(files) if f.endswith(".py")]
  units.append(("stdlib", STDLIB_VERSION, "PSF-2.0", std_files))
  excluded = []
  seen_names = set()
  for dist in sorted(md.distributions(path=[site]), key=lambda d: d.metadata["Name"].lower()):
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name in seen_names or name in _SKIP_DISTS:
      continue
    seen_names.add(name)
    text = licence(dist)
    files = []
    for f in dist.files or []:
      path = os.path.realpath(dist.locate_file(f))
      if str(f).endswith(".py") and path.startswith(os.path.realpath(site) + os.sep) \
          and os.path.isfile(path):
        files.append((os.path.relpath(path, os.path.realpath(site)), path))
    if not files:
      continue
    why = licence_verdict(text)
    if why:
      excluded.append((name, dist.version, text or "-", why, len(files),
                       sum(os.path.getsize(p) for _, p in files)))
      continue
    units.append((name, dist.version, text, sorted(files)))

  def key(pkg, rel):  # 'stdlib/email/...' or 'optax/...' for HELD_OUT
    return f"{pkg}/{rel}" if pkg == "stdlib" else pkg

  # Validation first: a file identical to a held-out one never enters training.
  order = sorted(((not _held_out(key(p, r)), p, r, a)
                  for p, _, _, fs in units for r, a in fs))
  seen, members = set(), []
  stats = {}  # (split, package) -> [files, bytes, dups, skipped]
  for is_train, pkg, rel, path in order:
    split = "train" if is_train else "validation"
    st = stats.setdefault((split, pkg), [0, 0, 0, 0])
    with open(path, "rb") as f:
      raw = f.read()
    try:
      raw.decode("utf-8")
    except UnicodeDecodeError:
      st[3] += 1
      continue
    if not raw.strip() or len(raw) > max_file_bytes:
      st[3] += 1
      continue
    digest = hashlib.sha256(raw).digest()
    if digest in seen:
      st[2] += 1
      continue
    seen.add(digest)
    members.append((split, pkg, rel, raw))
    st[0] += 1
    st[1] += len(raw)
  meta = {p: (v, lic) for p, v, lic, _ in units}
  rows = [(split, pkg, *meta[pkg], *st) for (split, pkg), st in sorted(stats.items())
          if st[0]]
  return sorted(members, key=lambda m: m[:3]), rows, excluded


def manifest(rows, excluded, max_file_bytes: int) -> str:
  total = {s: sum(r[5] for r in rows if r[0] == s) for s in ("train", "validation")}
  files = {s: sum(r[4] for r in rows if r[0] == s) for s in ("train", "validation")}
  lines = [
      "# pycorpus: .py files of permissively licensed packages + CPython's stdlib "
      "(benchmarks/make_pycorpus.py).",
      f"# train: {files['train']} files, {total['train']} bytes; validation: "
      f"{files['validation']} files, {total['validation']} bytes "
      f"({total['validation'] / max(1, sum(total.values())):.2%}); held out: "
      f"{', '.join(HELD_OUT)}.",
      f"# files: UTF-8, non-empty, <= {max_file_bytes} bytes, identical contents kept once "
      f"(duplicates: dropped; skipped: not UTF-8, empty or too large).",
      "split\tpackage\tversion\tlicence\tfiles\tbytes\tduplicates\tskipped"]
  lines += ["\t".join(str(x) for x in r) for r in rows]
  lines.append("# excluded packages (not in the corpus):")
  lines.append("excluded\tpackage\tversion\tlicence\treason\tfiles\tbytes")
  lines += ["excluded\t" + "\t".join(str(x) for x in e) for e in excluded]
  return "\n".join(lines) + "\n"


def write_tar(members, manifest_text: str, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))

  with tarfile.open(tmp, "w:xz", preset=6, format=tarfile.GNU_FORMAT) as tar:
    add(tar, "pycorpus/MANIFEST.tsv", manifest_text.encode())
    for split, pkg, rel, raw in members:
      add(tar, f"pycorpus/{split}/{pkg}/{rel}", raw)
  os.replace(tmp, out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--site_packages", default=sysconfig.get_paths()["purelib"])
  p.add_argument("--stdlib", default=os.environ.get("GROWJAX_STDLIB_DIR", ""),
                 help="a full CPython 3.11.7 Lib tree (default: $GROWJAX_STDLIB_DIR)")
  p.add_argument("--out", default=os.path.join(ROOT, ".pycorpus", "pycorpus.tar.xz"))
  p.add_argument("--manifest", default=os.path.join(ROOT, "configs", "repro",
                                                    "larger_corpus_manifest.tsv"))
  p.add_argument("--max_file_bytes", type=int, default=1 << 20)
  a = p.parse_args()
  if not a.stdlib or not os.path.isfile(os.path.join(a.stdlib, "os.py")):
    sys.exit(f"make_pycorpus: --stdlib {a.stdlib!r} is not a stdlib tree (no os.py) — "
             f"extract .stdlib/py311.tar.xz (mkdir -p /tmp/py311 && tar xJf "
             f".stdlib/py311.tar.xz -C /tmp/py311) and set GROWJAX_STDLIB_DIR=/tmp/py311")
  members, rows, excluded = collect(a.site_packages, a.stdlib, a.max_file_bytes)
  text = manifest(rows, excluded, a.max_file_bytes)
  write_tar(members, text, a.out)
  with open(a.manifest, "w", encoding="utf-8") as f:
    f.write(text)
  print("".join(text.splitlines(keepends=True)[:3]), end="")
  print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB) and {a.manifest}")


if __name__ == "__main__":
  main()
