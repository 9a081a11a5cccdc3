"""What a finished `import-hf` / `export-hf` leaves behind, and how it gets there, shared
by both directions: a record (`growjax_import.json` / `growjax_export.json`: the source,
the options and a fingerprint of the source's files) that makes a rerun "nothing to do"
or names what differs, and a staging directory renamed onto --to once complete, so
nothing half-written is ever left at the destination."""

from __future__ import annotations

import json
import os

import jax
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import distributed
from growjax import lease

MARKER = "growjax_import.json"        # what an import writes into --to
EXPORT_MARKER = "growjax_export.json"  # what an export writes into --to


def destination(to: str, flag: str, record: dict | None = None,
                 marker: str = MARKER) -> epath.Path:
  out = epath.Path(ckpt_lib.absolute(to))
  if out.exists() and (not out.is_dir() or
                       [p for p in out.iterdir() if not lease.is_lease_file(p.name)]):
    why = differs(read_record(out / marker), record) if record else None
    raise ValueError(f"{flag}={out} exists and is not empty{why or ''} — choose a new or "
                     f"empty directory; nothing was written")
  return out


def files_fingerprint(root: epath.Path, recursive: bool = True) -> list[list]:
  """[relative path, bytes, mtime in ns] of every file under `root` (local or gs://):
  what says the source is the one a finished import / export read."""
  out = []

  def walk(d: epath.Path):
    for p in sorted(d.iterdir()):
      if recursive and p.is_dir():
        yield from walk(p)
      else:
        yield p

  for p in walk(root):
    if p.is_file() and not lease.is_lease_file(p.name):
      if ckpt_lib.is_url(os.fspath(p)):
        st = p.stat()
        size, mtime = int(st.length), int(float(st.mtime or 0) * 1e9)
      else:
        st = os.stat(os.fspath(p))
        size, mtime = st.st_size, st.st_mtime_ns
      out.append([os.fspath(p.relative_to(root)), size, mtime])
  return out


def read_record(path: epath.Path) -> dict | None:
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def differs(old: dict | None, new: dict) -> str | None:
  """Why a destination's record is not this command's: a clause for the refusal."""
  if old is None or "options" not in old:
    return None
  if old.get("source") != new["source"]:
    return f" (it holds the {new['what']} of {old.get('source')})"
  if old.get("options") != new["options"]:
    diff = [f"--{k}={old['options'].get(k)!r} there, {v!r} now"
            for k, v in new["options"].items() if old["options"].get(k) != v]
    return f" (it holds the {new['what']} of the same source with other options: " \
        f"{'; '.join(diff)})"
  return (f" (it holds the {new['what']} of the same source, whose files have changed "
          f"since)")


def already_done(to: str, record: dict, marker: str, check=None) -> bool:
  """Whether --to holds a finished run of this same command: its record (written last,
  inside the staging dir renamed into place) equal to `record`, and `check(out)` (the
  output still whole) passing. Decided once, on process 0, for all processes."""
  out = epath.Path(ckpt_lib.absolute(to))
  old = read_record(out / marker) if out.is_dir() else None
  same = old is not None and all(old.get(k) == v for k, v in record.items()
                                 if k != "what")
  if same and check is not None:
    check(out)
  return bool(distributed.agreed([int(same)])[0])


def staging(out: epath.Path) -> epath.Path:
  """A temporary sibling of `out`, renamed onto it once complete (a leftover from an
  earlier failed attempt is this command's own and is cleared)."""
  tmp = out.parent / f".{out.name}.partial"
  if jax.process_index() == 0:
    if tmp.exists():
      tmp.rmtree()
    tmp.mkdir(parents=True)
  distributed.agreed([0])
  return tmp


def publish(tmp: epath.Path, out: epath.Path) -> None:
  distributed.agreed([0])
  if jax.process_index() == 0:
    with lease.carried(out, tmp):   # the command's lease on `out` moves with the rename
      if out.exists():
        out.rmdir()   # checked empty before anything was written
      tmp.rename(out)
  distributed.agreed([0])


def abandon(tmp: epath.Path) -> None:
  if jax.process_index() == 0 and tmp.exists():
    tmp.rmtree()
