"""The tokenizer a dataset or checkpoint was made with, recorded so it travels with it.

A record is a small JSON dict (`describe`): the spec it was built from, its kind, its
`identity` (`growjax.data.tokenizers`' content hash), vocab size, special ids, the
model max length when one is known, and the names of its files. `keep_files` copies
those files into a folder beside the data or the checkpoints (`tokenizer/`), and
`spec_in` rebuilds a spec pointing at the copies, so a dataset or checkpoint moved or
shared keeps its tokenizer. `prepare-data` records it in index.json, `import-hf` and
the trainer in the checkpoint's metadata (key `tokenizer`); eval, sample and export
read it there. This module decides nothing about which tokenizer a run uses.
"""

from __future__ import annotations

import json
import os

from etils import epath

from growjax.data.tokenizers import HF_PREFIX, SPM_PREFIX, TIKTOKEN_PREFIX, make_tokenizer

META_KEY = "tokenizer"      # a checkpoint's meta key; also index.json's
FOLDER = "tokenizer"        # beside a dataset's index.json or in a checkpoints dir
# Files a kind brings along (the first is the one the spec names); the others are read
# for special tokens and max length, and exported for AutoTokenizer.
KIND_FILES = {"hf": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
              "spm": (), "tiktoken": ()}
PREFIX = {"hf": HF_PREFIX, "spm": SPM_PREFIX, "tiktoken": TIKTOKEN_PREFIX}
HUGE = 10**9   # transformers writes int(1e30) as model_max_length when it knows none


def kind_of(spec: str) -> str:
  spec = (spec or "").strip()
  for kind, prefix in PREFIX.items():
    if spec.startswith(prefix):
      return kind
  return "byte"


def source_files(spec: str) -> tuple[str | None, list[str]]:
  """(the folder, the names) of the files `spec` reads; (None, []) for 'byte'."""
  kind = kind_of(spec)
  if kind == "byte":
    return None, []
  path = os.path.expanduser(spec.strip()[len(PREFIX[kind]):].strip())
  if kind == "tiktoken":
    path = path.split("@")[0]
  if kind == "hf" and os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  folder, name = os.path.split(os.path.abspath(path))
  names = [name] + [n for n in KIND_FILES[kind]
                    if n != name and os.path.isfile(os.path.join(folder, n))]
  return folder, names


def _tokenizer_config(folder: str | None) -> dict:
  path = os.path.join(folder or "", "tokenizer_config.json")
  if folder is None or not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (ValueError, OSError):
    return {}
  return out if isinstance(out, dict) else {}


def describe(spec: str, tok=None, model_max_length: int | None = None) -> dict:
  """The record of tokenizer `spec` (built when `tok` is not given). `model_max_length`
  wins over tokenizer_config.json's (transformers' 'no limit' sentinel is dropped)."""
  tok = tok or make_tokenizer(spec)
  folder, names = source_files(spec)
  if model_max_length is None:
    value = _tokenizer_config(folder).get("model_max_length")
    model_max_length = int(value) if isinstance(value, (int, float)) and 0 < value < HUGE \
        else None
  kind = kind_of(spec)
  suffix = spec.split("@", 1)[1] if kind == "tiktoken" and "@" in spec else ""
  return {"spec": spec, "kind": kind, "identity": tok.identity,
          "vocab_size": int(tok.vocab_size), "bos_id": int(tok.bos_id),
          "eos_id": int(tok.eos_id), "pad_id": int(tok.pad_id),
          "model_max_length": model_max_length, "files": names, "encoding": suffix}


def keep_files(record: dict, into: str | os.PathLike, folder: str | None = None,
               write: bool = True) -> dict:
  """Copies the record's files from `folder` (its spec's, by default) into `into` (made
  when missing; a file already there with the same bytes is left alone) and returns
  the record with `dir` naming `into`'s last component. Files it cannot find are left
  out of `files`: the ids still travel. `write=False`: the record only (the processes
  other than the one that copies)."""
  if folder is None:
    folder, _ = source_files(record["spec"])
  if folder is None or not record.get("files"):
    return dict(record, files=[], dir=None)
  into = epath.Path(into)
  kept = []
  for name in record["files"]:
    src = epath.Path(folder) / name
    if not src.exists():
      continue
    dst = into / name
    if write and os.path.abspath(os.fspath(src)) != os.path.abspath(os.fspath(dst)):
      if not (dst.exists() and dst.read_bytes() == src.read_bytes()):
        into.mkdir(parents=True, exist_ok=True)
        src.copy(dst, overwrite=True)
    kept.append(name)
  if not kept or kept[0] != record["files"][0]:   # the spec's own file is gone
    return dict(record, files=[], dir=None)
  return dict(record, files=kept, dir=into.name)


def spec_in(record: dict | None, base: str | os.PathLike) -> str | None:
  """A spec reading the record's kept copies under `base` (the folder holding its
  `dir`); None when the record kept no file (or there is no record)."""
  if not record:
    return None
  if record.get("kind") == "byte":
    return "byte"
  if not record.get("files") or not record.get("dir"):
    return None
  path = epath.Path(base) / record["dir"] / record["files"][0]
  if not path.exists():
    return None
  suffix = f"@{record['encoding']}" if record.get("encoding") else ""
  return f"{PREFIX[record['kind']]}{os.fspath(path)}{suffix}"


def usable_spec(record: dict | None, base: str | os.PathLike) -> str | None:
  """The kept copies' spec, else the recorded spec when its file still exists."""
  spec = spec_in(record, base)
  if spec or not record:
    return spec
  if kind_of(record.get("spec", "")) == "byte":   # a record from before `kind`
    return "byte"
  folder, names = source_files(record.get("spec", ""))
  if folder is not None and names and os.path.isfile(os.path.join(folder, names[0])):
    return record["spec"]
  return None
