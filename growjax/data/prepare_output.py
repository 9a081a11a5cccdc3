"""The output directory of `growjax prepare-data`: the manifest that says what is being
prepared, the claim (new / resume / done, or refused: another dataset's output, files
this command did not write), the per-shard records a resume starts from, and the
removal of temporaries only this preparation's killed runs left."""

from __future__ import annotations

import json

from etils import epath

from growjax import lease
from growjax.data import shards

STATE_DIR = ".prepare"
MANIFEST = "manifest.json"


def state_path(out: epath.Path, name: str) -> epath.Path:
  return out / STATE_DIR / name


def read_json(path: epath.Path):
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except json.JSONDecodeError as e:
    what = ("index" if path.name == shards.INDEX else "progress record")
    raise ValueError(f"{path} is not valid JSON ({e}) — growjax prepare-data's {what} is "
                     f"damaged: delete it and rerun the same command.") from None


def _without_units(manifest: dict) -> dict:
  return {k: v for k, v in manifest.items() if k != "unit_bytes"}


def claim(out: epath.Path, manifest: dict) -> str:
  """'new' | 'resume' | 'done': may this preparation write into `out`? Refuses another
  dataset's output, or a directory holding files this command did not write."""
  index = read_json(out / shards.INDEX) if out.exists() else None
  mine = read_json(state_path(out, MANIFEST)) if out.exists() else None
  fix = (f"give another --out (or config.data.prepared_dir), or delete {out} yourself if "
         f"it is no longer needed")
  if index is not None:
    prep = index.get("preparation")
    # Units only say how the work was cut (a resume needs them); the shards do not
    # depend on them, so a finished output is the same dataset whatever unit_bytes was.
    if prep is not None and _without_units(prep) == _without_units(manifest):
      return "done"
    old = prep or {"tokenizer": index.get("tokenizer", {}).get("identity"),
                   "seq_len": index.get("seq_len")}
    diff = [k for k in ("sources", "tokenizer", "seq_len", "text_key", "shard_windows")
            if old.get(k) != manifest.get(k)]
    raise ValueError(f"{out} already holds a prepared dataset ({out / shards.INDEX}) of "
                     f"other {', '.join(diff) or 'settings'} — {fix}.")
  if mine is not None:
    if mine != manifest:
      diff = [k for k in manifest if mine.get(k) != manifest.get(k)]
      raise ValueError(f"{out} holds a partial preparation of another dataset (its "
                       f"{', '.join(diff)} differ, {state_path(out, MANIFEST)}) — rerun "
                       f"with the config that started it to finish it, or {fix}.")
    return "resume"
  if out.exists():
    foreign = [p.name for p in out.iterdir() if not lease.is_lease_file(p.name)]
    if foreign:
      raise ValueError(f"{out} is not empty ({', '.join(sorted(foreign)[:3])}"
                       f"{', ...' if len(foreign) > 3 else ''}) and is not a growjax "
                       f"prepare-data output — {fix}.")
  return "new"


def remove_own_temporaries(out: epath.Path) -> None:
  """The temporary files killed runs of this preparation left on this host
  (`shards.temporary_prefix` names of processes that are gone, in a directory whose
  manifest is ours): never a shard, never a running process's file."""
  for folder in (out, out / STATE_DIR):
    if folder.exists():
      for p in folder.iterdir():
        if shards.is_stale_temporary(p.name):
          p.unlink()


def completed_shards(out: epath.Path, split: str) -> list[dict]:
  """The records of shards 0..k-1 present and consistent, in order."""
  done = []
  present = {p.name: p for p in out.iterdir()} if out.exists() else {}
  while True:
    name = shards.shard_name(split, len(done))
    record = read_json(state_path(out, name + ".json"))
    if record is None or name not in present:
      return done
    size = int(present[name].stat().length)
    if size != int(record["bytes"]):
      raise ValueError(
          f"shard {out / name} is {'empty' if size == 0 else f'{size} bytes'} where this "
          f"preparation wrote {record['bytes']} — it was damaged after it was written: "
          f"delete it and rerun the same command (only missing shards are written).")
    done.append(record)
