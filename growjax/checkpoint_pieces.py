"""One checkpoint step written and read in pieces (streamed offline growth, issue 14;
Hugging Face import).

A piece of the `state` item is a set of its leaves, by key path. Pieces are written
with orbax's partial save (`orbax.checkpoint.experimental.v1.partial`: each piece
its own OCDBT sub-store, merged into one store and one tree metadata at finalize),
then the `data` and `meta` items are added and the directory is renamed into place,
so the result is an ordinary step: `Checkpoints.restore` reads it as one TrainState
(the tree metadata is the same as a whole save's; tested), `verify_step` checks it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from growjax.checkpoint import COMMIT_SUCCESS, disk_full_error, absolute, write_manifest


STREAMING = "_growjax_streamed"   # the step being assembled, inside the checkpoints dir


def _is_empty_node(x) -> bool:
  """None or an empty container (optax's EmptyState): orbax records these as empty nodes."""
  return x is None or (isinstance(x, (tuple, list, dict)) and not x)


def state_leaves(tree: Any) -> list[tuple[tuple, Any]]:
  """(key path, leaf) of every array leaf and every empty node (value None) of a tree, in
  `jax.tree` order: the units a piece is made of."""
  import jax   # noqa: PLC0415
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_empty_node)
  return [(p, None if _is_empty_node(v) else v) for p, v in flat]


def ocp_keys(path: tuple) -> list:
  """A jax key path as orbax names its parts (attribute and dict keys, list positions)."""
  import jax   # noqa: PLC0415
  return [k.idx if isinstance(k, jax.tree_util.SequenceKey) else
          k.name if isinstance(k, jax.tree_util.GetAttrKey) else k.key for k in path]


def _orbax_tree(pairs: list[tuple[tuple, Any]]) -> dict:
  """Key paths and leaves -> nested dicts (attribute and dict keys) and lists (sequence
  positions, missing ones None): the containers orbax serialises a pytree into, so a
  piece's tree metadata merges into the whole tree's."""
  import jax   # noqa: PLC0415
  seq = jax.tree_util.SequenceKey
  root: dict = {}
  for path, value in pairs:
    node = root
    for i, key in enumerate(ocp_keys(path)):
      if isinstance(node, list):
        node.extend([None] * (key + 1 - len(node)))
      if i == len(path) - 1:
        node[key] = value
        break
      child = node[key] if (isinstance(node, list) or key in node) else None
      if child is None:
        child = [] if isinstance(path[i + 1], seq) else {}
        node[key] = child
      node = child
  return root


class PieceWriter:
  """Writes one step of a checkpoints dir piece by piece: `write` some leaves of the state
  (each call's arrays can be freed once it returns), then `finish` with the data position
  and the metadata. Until `finish` renames it into place the step is not listed (the
  directory is `STREAMING`, not a step number), so an interrupted write is never resumed
  from. Single process, local or `gs://`."""

  def __init__(self, directory: str):
    from orbax.checkpoint.experimental.v1 import partial   # noqa: PLC0415
    self._partial = partial
    self.root = epath.Path(absolute(directory))
    self.root.mkdir(parents=True, exist_ok=True)
    self.path = self.root / STREAMING
    self.pieces = 0
    self._arrays: set[str] = set()   # tree-metadata keys of the arrays written

  def write(self, pairs: list[tuple[tuple, Any]]) -> None:
    """Writes these (key path, array or None) leaves; blocks until they are on disk."""
    try:
      self._partial.save(os.fspath(self.path), _orbax_tree(pairs))
    except Exception as e:  # noqa: BLE001 - only a full disk is translated
      raise disk_full_error(e, os.fspath(self.root), None) from e
    self.pieces += 1
    self._arrays |= {str(tuple(str(k) for k in ocp_keys(p))) for p, v in pairs
                     if v is not None}

  def finish(self, step: int, data_state: dict | None, meta: dict) -> str:
    """Merges the pieces into one `state` item, adds `data` and `meta`, renames the step
    into place and records its file manifest; returns the step dir."""
    self._partial.finalize(os.fspath(self.path))
    (self.path / COMMIT_SUCCESS).unlink(missing_ok=True)   # re-added once complete
    tree = json.loads((self.path / "state" / "_METADATA").read_text())["tree_metadata"]
    arrays = {k for k, v in tree.items() if v["value_metadata"]["value_type"] != "None"}
    if arrays != self._arrays:   # a merge that lost or invented a leaf: never rename it in
      raise ValueError(f"{self.path}: the merged state holds {len(arrays)} arrays, "
                       f"{len(self._arrays)} were written — grow with stream=False")
    for item, value in (("data", data_state or {}), ("meta", meta)):
      (self.path / item).mkdir()
      ocp.JsonCheckpointHandler().save(self.path / item, args=ocp.args.JsonSave(value))
    handlers = {"state": ocp.StandardCheckpointHandler, "data": ocp.JsonCheckpointHandler,
                "meta": ocp.JsonCheckpointHandler}
    md = self.path / "_CHECKPOINT_METADATA"
    step_meta = json.loads(md.read_text())
    step_meta["item_handlers"] = {k: f"{h.__module__}.{h.__qualname__}"
                                  for k, h in handlers.items()}
    md.write_text(json.dumps(step_meta))
    final = self.root / str(step)
    if final.exists():
      raise ValueError(f"{final} already exists — the streamed step was left in "
                       f"{self.path}; move one of them away")
    self.path.rename(final)
    (final / COMMIT_SUCCESS).write_text(f"Checkpoint step {step} written in pieces.")
    write_manifest(final)
    return os.fspath(final)


def restore_leaves(directory: str, step: int, abstract_state: Any,
                   wanted: list[tuple]) -> dict[tuple, Any]:
  """Restores only the leaves at key paths `wanted` of a step's `state` item, each into
  its `abstract_state` leaf's dtype and sharding: {key path: array}. Every other leaf is
  an orbax placeholder, never read."""
  import jax   # noqa: PLC0415
  want = set(wanted)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
  item = treedef.unflatten([v if p in want else ocp.PLACEHOLDER for p, v in flat])
  args = treedef.unflatten([
      ocp.ArrayRestoreArgs(sharding=v.sharding, global_shape=v.shape, dtype=v.dtype)
      if p in want else ocp.PLACEHOLDER for p, v in flat])
  path = epath.Path(absolute(directory)) / str(step) / "state"
  with ocp.PyTreeCheckpointer() as reader:
    out = reader.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args))
  got, _ = jax.tree_util.tree_flatten_with_path(out, is_leaf=lambda x: x is ocp.PLACEHOLDER)
  return {p: v for p, v in got if p in want}
