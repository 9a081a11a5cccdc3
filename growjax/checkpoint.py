"""Orbax checkpoints of a run: train state, data-iterator position and run metadata.

Each step directory holds three items: `state` (params, optimizer state, step;
restored straight into whatever sharding the caller asks for, so a checkpoint
written on one mesh restores onto another), `data` (the loader's JSON state,
so a resumed run sees the same batches) and `meta` (model and run config, so a
checkpoint can be grown offline without its config file). Orbax writes into a
temporary directory and renames it when complete, so a half-written checkpoint
is never listed and never resumed from.

Paths go through `etils.epath`, so a checkpoint directory may be local or on
`gs://` (epath reaches GCS through gcsfs when TensorFlow is absent; orbax writes
array data through tensorstore's own GCS driver). On GCS orbax writes a step in
place and marks it finished with `commit_success.txt` instead of renaming, so a
`gs://` step counts as complete only once that file is there.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

STEP_DIR = re.compile(r"^\d+$")
COMMIT_SUCCESS = "commit_success.txt"   # orbax's "this save finished" marker on GCS


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names remote storage (`gs://bucket/...` and other `scheme://` URLs)."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """A local path made absolute (`~` expanded); a URL such as `gs://b/run` kept as it is."""
  path = os.fspath(path)
  if is_url(path):
    return str(epath.Path(path))      # only drops a trailing slash
  return os.path.abspath(os.path.expanduser(path))


def _is_complete(step_dir: epath.Path) -> bool:
  if not (step_dir / "state").is_dir():
    return False
  # Elsewhere orbax renames a finished temporary directory into place (no marker).
  return not os.fspath(step_dir).startswith("gs://") or (step_dir / COMMIT_SUCCESS).exists()


def _complete_steps(directory: epath.Path) -> list[int]:
  return sorted(int(d.name) for d in directory.iterdir()
                if STEP_DIR.match(d.name) and _is_complete(d))


class Checkpoints:
  """A run's checkpoint directory (`WORKDIR/checkpoints`)."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3,
               use_async: bool = True):
    self.directory = absolute(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None, meta: dict,
           force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores into `abstract_state`'s structure, dtypes and shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out.state, out.data, out.meta

  def meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def resolve(path: str, step: int | None = None, field: str = "--from") -> tuple[str, int]:
  """A checkpoint directory (or a workdir, or one step's directory) -> (checkpoints dir, step).

  Local or `gs://`. Fails with a message naming `field` when nothing complete is there.
  """
  path = absolute(path)
  p = epath.Path(path)
  if not p.is_dir():
    raise ValueError(f"{field}={path!r} does not exist or is not a directory.")
  if STEP_DIR.match(p.name) and (p / "state").is_dir():
    if not _is_complete(p):
      raise ValueError(f"{field}={path!r} is an incomplete save (no {COMMIT_SUCCESS}).")
    if step is not None and step != int(p.name):
      raise ValueError(f"{field}={path!r} is step {p.name}, but step {step} was asked for.")
    return str(p.parent), int(p.name)
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
    path = str(p)
  steps = _complete_steps(p)
  if not steps:
    raise ValueError(f"{field}={path!r} holds no complete growjax checkpoint (no step "
                     f"directory with a 'state' item); incomplete saves are ignored.")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise ValueError(f"{field}={path!r} has no step {step}; complete steps: {steps}.")
  return path, step


def latest_complete_step(path: str) -> int | None:
  """The latest complete step under a checkpoints dir or a workdir (local or `gs://`);
  None when there is none or `path` does not exist."""
  try:
    return resolve(path)[1]
  except (ValueError, FileNotFoundError):
    return None


def read_meta(directory: str, step: int) -> dict:
  """The `meta` item as plain JSON, without building a manager (cheap)."""
  step_dir = epath.Path(absolute(directory)) / str(step)
  for name in ("meta/metadata", "meta"):
    p = step_dir / name
    if p.exists() and not p.is_dir():
      return json.loads(p.read_text())
  return Checkpoints(directory, use_async=False).meta(step)
