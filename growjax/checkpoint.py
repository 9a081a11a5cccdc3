"""Orbax checkpoints of a run: train state, data-iterator position and run metadata.

Each step directory holds three items: `state` (params, optimizer state, step;
restored straight into whatever sharding the caller asks for, so a checkpoint
written on one mesh restores onto another), `data` (the loader's JSON state,
so a resumed run sees the same batches) and `meta` (model and run config, so a
checkpoint can be grown offline without its config file). Orbax writes into a
temporary directory and renames it when complete, so a half-written checkpoint
is never listed and never resumed from.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import orbax.checkpoint as ocp

STEP_DIR = re.compile(r"^\d+$")


class Checkpoints:
  """A run's checkpoint directory (`WORKDIR/checkpoints`)."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3,
               use_async: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

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

  Fails with a message naming `field` when nothing complete is there.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise ValueError(f"{field}={path!r} does not exist or is not a directory.")
  base = os.path.basename(path.rstrip("/"))
  if STEP_DIR.match(base) and os.path.isdir(os.path.join(path, "state")):
    if step is not None and step != int(base):
      raise ValueError(f"{field}={path!r} is step {base}, but step {step} was asked for.")
    return os.path.dirname(path), int(base)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(path)
                 if STEP_DIR.match(d) and os.path.isdir(os.path.join(path, d, "state")))
  if not steps:
    raise ValueError(f"{field}={path!r} holds no complete growjax checkpoint (no step "
                     f"directory with a 'state' item); incomplete saves are ignored.")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise ValueError(f"{field}={path!r} has no step {step}; complete steps: {steps}.")
  return path, step


def read_meta(directory: str, step: int) -> dict:
  """The `meta` item as plain JSON, without building a manager (cheap)."""
  for name in ("meta/metadata", "meta"):
    p = os.path.join(directory, str(step), name)
    if os.path.isfile(p):
      with open(p) as f:
        return json.load(f)
  return Checkpoints(directory, use_async=False).meta(step)
