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

import concurrent.futures
import dataclasses
import errno
import json
import os
import re
import shutil
import sys
import threading
import time
from typing import Any

import orbax.checkpoint as ocp
import xxhash
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy

STEP_DIR = re.compile(r"^\d+$")
COMMIT_SUCCESS = "commit_success.txt"   # orbax's "this save finished" marker on GCS
FILES = "growjax_files.json"            # a finished step's files, sizes and checksums
MANIFEST_FORMAT = "growjax-files/2"     # FILES with the step and each file's xxh3
STEP_META = "saved_as_step"             # meta key: the step a checkpoint was saved as
_CHUNK = 16 << 20                       # bytes read at a time while checksumming


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


class DiskFull(OSError):
  """ENOSPC while saving a checkpoint; `str()` is the one line a person sees."""

  def __init__(self, message: str, directory: str):
    super().__init__(errno.ENOSPC, message, directory)
    self.one_line = message

  def __str__(self) -> str:
    return self.one_line


def _tree_bytes(path: epath.Path) -> int:
  total = 0
  for root, _, files in os.walk(os.fspath(path)):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(root, f))
      except OSError:
        pass
  return total


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.1f} MiB"


def _check_json(path: epath.Path, root: epath.Path) -> tuple[str, str] | None:
  if not path.exists():
    return str(path), "missing"
  try:
    json.loads(path.read_text())
  except (ValueError, OSError, UnicodeDecodeError) as e:
    return str(path), f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
  return None


def file_digest(path: str | os.PathLike) -> str:
  """xxh3-64 of a file's bytes, hex: the content checksum of a finished step's files.
  xxh3 hashes at memory speed (13.6 GiB/s on one core here against crc32c's 2.9), so
  checksumming a step costs a small share of writing it (benchmarks/checksum_cost.py)."""
  digest = xxhash.xxh3_64()
  buffer = bytearray(_CHUNK)
  view = memoryview(buffer)
  with open(os.fspath(path), "rb", buffering=0) as f:
    while n := f.readinto(buffer):
      digest.update(view[:n])
  return digest.hexdigest()


def _digests(root: str, names: list[str]) -> dict[str, str]:
  """{name: file_digest} over a few threads (xxhash releases the GIL on large buffers)."""
  if not names:
    return {}
  with concurrent.futures.ThreadPoolExecutor(min(8, len(names))) as pool:
    return dict(zip(names, pool.map(lambda n: file_digest(os.path.join(root, n)), names)))


def read_manifest(step_dir: str | os.PathLike) -> dict | None:
  """A step's `growjax_files.json` as {"step": int | None, "files": {name: {"size": int,
  "xxh3": str | None}}}, None when absent; one written before checksums (a flat
  {name: size}) reads with no step and no digests. Raises ValueError when unreadable."""
  path = epath.Path(step_dir) / FILES
  if not path.exists():
    return None
  try:
    raw = json.loads(path.read_text())
  except (ValueError, OSError, UnicodeDecodeError) as e:
    raise ValueError(f"unreadable ({type(e).__name__})") from None
  if not isinstance(raw, dict):
    raise ValueError("not a JSON object")
  if raw.get("format") == MANIFEST_FORMAT:
    return {"step": raw.get("step"), "files": raw.get("files") or {}}
  return {"step": None, "files": {k: {"size": v, "xxh3": None} for k, v in raw.items()}}


def verify_step(step_dir: str | os.PathLike, checksums: bool = True
                ) -> tuple[str, str] | None:
  """Whether one finished step is as it was written. Returns (file, what is wrong), or
  None if intact.

  Against the step's `growjax_files.json` (written when the save finished): the step it
  was written as (a step directory renamed or swapped with another is caught), every
  file's size, and with `checksums` every file's xxh3 (a flipped bit or an edited data
  position keeps the size). Then orbax's JSON metadata parsed, the `state` item's OCDBT
  manifests present and no file of it empty; the `meta` item's own step, where it has
  one, against the directory's name. A step without the manifest (a kill before it was
  written, a gs:// step) gets the structural checks; restoring it still fails on damage,
  which `growjax.train.restore_or_init` treats the same way."""
  d = epath.Path(step_dir)
  if is_url(d):   # on gs:// a listing per file is not cheap; orbax's marker suffices
    return None
  try:
    manifest = read_manifest(d)
  except ValueError as e:
    return str(d / FILES), str(e)
  if manifest is not None:
    written = manifest["step"]
    if written is not None and STEP_DIR.match(d.name) and int(written) != int(d.name):
      return str(d), f"step {written} as written, not step {d.name}: moved or renamed"
    for name, entry in manifest["files"].items():
      f = d / name
      if not f.exists():
        return str(f), "missing"
      now = os.path.getsize(os.fspath(f))
      if now != entry["size"]:
        return str(f), f"{now} bytes, written as {entry['size']} (truncated)"
    if checksums:
      wanted = {n: e["xxh3"] for n, e in manifest["files"].items() if e.get("xxh3")}
      for name, digest in sorted(_digests(os.fspath(d), sorted(wanted)).items()):
        if digest != wanted[name]:
          return str(d / name), (f"changed since it was written (xxh3 {digest}, written "
                                 f"as {wanted[name]}): same size, other bytes")
  for name in ("_CHECKPOINT_METADATA", "state/_METADATA", "data/metadata", "meta/metadata"):
    bad = _check_json(d / name, d)
    if bad:
      return bad
  meta_step = json.loads((d / "meta" / "metadata").read_text()).get(STEP_META)
  if meta_step is not None and STEP_DIR.match(d.name) and int(meta_step) != int(d.name):
    return str(d / "meta" / "metadata"), (f"holds step {meta_step}, not step {d.name}: "
                                          f"moved or renamed")
  state = d / "state"
  if not (state / "manifest.ocdbt").exists():
    return str(state / "manifest.ocdbt"), "missing"
  for pdir in state.glob("ocdbt.process_*"):
    if not (pdir / "manifest.ocdbt").exists():
      return str(pdir / "manifest.ocdbt"), "missing"
    if not (pdir / "d").is_dir() or not list((pdir / "d").iterdir()):
      return str(pdir / "d"), "no array data files"
  for root, _, files in os.walk(os.fspath(state)):
    for f in files:
      full = os.path.join(root, f)
      if os.path.getsize(full) == 0:
        return full, "empty (0 bytes)"
  return None


def write_manifest(step_dir: str | os.PathLike) -> None:
  """Records every file of a finished local step with its size and xxh3, and the step it
  was written as (`growjax_files.json`), so `verify_step` can tell a missing, truncated,
  changed or misplaced file by name."""
  d = epath.Path(step_dir)
  if is_url(d) or (d / FILES).exists():
    return
  root = os.fspath(d)
  names = sorted(os.path.relpath(os.path.join(r, f), root)
                 for r, _, fs in os.walk(root) for f in fs)
  names = [n for n in names if not n.startswith(FILES)]
  digests = _digests(root, names)
  files = {n: {"size": os.path.getsize(os.path.join(root, n)), "xxh3": digests[n]}
           for n in names}
  step = int(d.name) if STEP_DIR.match(d.name) else None
  tmp = d / (FILES + ".tmp")
  tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "step": step, "files": files},
                            sort_keys=True))
  tmp.rename(d / FILES)


def set_aside(step_dir: str | os.PathLike, reason: str = "damaged") -> str:
  """Renames a step dir to `<step>.<reason>-<n>` (never deletes); returns the new path.
  `reason`: 'damaged' (fails its checks) or 'bad' (written inside a run of bad steps)."""
  d = epath.Path(step_dir)
  n = 1
  while (d.parent / f"{d.name}.{reason}-{n}").exists():
    n += 1
  target = d.parent / f"{d.name}.{reason}-{n}"
  d.rename(target)
  return str(target)


@dataclasses.dataclass
class _KeepGood(preservation_policy.PreservationPolicy):
  """Orbax retention: the newest checkpoint known good (`Checkpoints.mark_good`) is never
  rotated out by `keep_checkpoints`, however many later ones are written."""
  step: int | None = None

  def should_preserve(self, checkpoints, *, context):
    return [c.step == self.step for c in checkpoints]


class Checkpoints:
  """A run's checkpoint directory (`WORKDIR/checkpoints`). `keep=None` keeps every step;
  otherwise the newest `keep` and the newest known good (`mark_good`)."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int | None = 3,
               use_async: bool = True, on_saved=None):
    self.directory = absolute(directory)
    # on_saved(step, seconds, bytes | None): called once a save finished (process 0), from
    # orbax's finalize thread for an async one; seconds from the save's start.
    self.on_saved = on_saved
    self._started: dict[int, float] = {}
    self._keep_good = _KeepGood()
    self._manifest_lock = threading.Lock()
    policy = (preservation_policy.PreserveAll() if keep is None else
              preservation_policy.AnyPreservationPolicy(
                  [preservation_policy.LatestN(n=keep), self._keep_good]))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, preservation_policy=policy, create=True,
        enable_async_checkpointing=use_async,
        # The manifest (sizes, checksums) is written as soon as a save finishes, off the
        # training thread for an async save.
        async_options=ocp.AsyncOptions(post_finalization_callback=self._record_finished)
        if use_async else None)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def mark_good(self, step: int | None) -> None:
    """`step` is the newest checkpoint known good: kept through rotation from now on."""
    self._keep_good.step = step

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None, meta: dict,
           force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved.
    A full disk (ENOSPC) raises `DiskFull`; the last complete checkpoint is kept."""
    self._started[int(step)] = time.perf_counter()
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state or {}),
          meta=ocp.args.JsonSave(dict(meta, **{STEP_META: int(step)}))), force=force)
      if saved:
        self._record_finished()
      else:
        self._started.pop(int(step), None)
      return saved
    except Exception as e:  # noqa: BLE001 - only a full disk is translated
      raise self._disk_full(e, step) from e

  def _record_finished(self) -> None:
    """A file manifest for each finished step that lacks one (process 0, local disks),
    and `on_saved` for each save this object started that has finished. An async save
    still in flight is not a complete step yet, so it is skipped. Called after each
    save, from orbax's finalize thread for an async one."""
    import jax   # noqa: PLC0415 - the module stays importable without initialising jax
    if jax.process_index() != 0 or (is_url(self.directory) and not self._started):
      return
    root = epath.Path(self.directory)
    with self._manifest_lock:
      for s in (_complete_steps(root) if root.exists() else []):
        write_manifest(root / str(s))   # local disks only
        started = self._started.pop(s, None)
        if started is not None and self.on_saved is not None:
          manifest = None if is_url(root) else read_manifest(root / str(s))
          size = (sum(f["size"] for f in manifest["files"].values())
                  if manifest is not None else None)
          self.on_saved(s, time.perf_counter() - started, size)

  def _disk_full(self, e: BaseException, step: int | None) -> BaseException:
    return disk_full_error(e, self.directory, step)

  def verify(self, step: int) -> tuple[str, str] | None:
    return verify_step(epath.Path(self.directory) / str(step))

  def set_aside(self, step: int, reason: str = "damaged") -> str:
    """Moves a damaged (or bad) step out of the way (renamed, never deleted)."""
    moved = set_aside(epath.Path(self.directory) / str(step), reason)
    self.manager.reload()
    return moved

  def complete_steps(self) -> list[int]:
    root = epath.Path(self.directory)
    return _complete_steps(root) if root.exists() else []   # gs:// before its first save

  def restore(self, step: int, abstract_state: Any, keep_fp8_history: bool = False
              ) -> tuple[Any, dict, dict]:
    """Restores into `abstract_state`'s structure, dtypes and shardings. Train-state
    extras the checkpoint holds beyond what a reader asks for (delayed FP8's amax
    histories: `SAVED_EXTRAS`, registered by `growjax.train.state`) come back at their
    saved shapes with `keep_fp8_history` (the trainer fits them to its run), and stay on
    disk otherwise (growth, export, evaluation read the model's state)."""
    target, meta = abstract_state, None
    for extra in SAVED_EXTRAS:
      if extra.applies(target):
        meta = self.meta(step) if meta is None else meta
        target = extra.abstract(target, meta)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    state = out.state
    if target is not abstract_state and not keep_fp8_history:
      for extra in SAVED_EXTRAS:
        state = extra.drop(state)
    return state, out.data, _without_step(out.meta)

  def meta(self, step: int) -> dict:
    return _without_step(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta)

  def data(self, step: int) -> dict:
    """The `data` item (the loader position) alone, without the state."""
    return self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore())).data

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
      self._record_finished()
    except Exception as e:  # noqa: BLE001 - an async save's full disk surfaces here
      raise self._disk_full(e, None) from e

  def close(self) -> None:
    self.manager.close()


def _without_step(meta: dict) -> dict:
  """The metadata a caller saved: the step `save` adds (for `verify_step`) left out."""
  return {k: v for k, v in (meta or {}).items() if k != STEP_META}


FP8_HISTORY_META = "fp8_history"   # meta key: length of the amax histories a step holds

# Train-state extras a checkpoint may hold that a reader of the model does not ask for:
# objects with `applies(abstract_state)` (the reader left the extra out), `abstract(
# abstract_state, meta) -> abstract_state` (what to restore into) and `drop(state) ->
# state` (leave it out again), registered by the module that owns the
# extra (`growjax.train.state` for delayed FP8's amax histories), so this module knows no
# model and no trainer.
SAVED_EXTRAS: list = []


def disk_full_error(e: BaseException, directory: str, step: int | None) -> BaseException:
  """`e` as a one-line `DiskFull` when a full disk caused it, else `e` itself."""
  cause = e
  while cause is not None and not (isinstance(cause, OSError) and
                                   cause.errno == errno.ENOSPC):
    cause = cause.__cause__ or cause.__context__
  if isinstance(e, DiskFull) or (cause is None and "No space left on device" not in str(e)):
    return e
  root = epath.Path(directory)
  steps = _complete_steps(root) if root.exists() else []
  last = steps[-1] if steps else None
  needed = _tree_bytes(root / str(last)) if last is not None and not is_url(root) else 0
  try:
    free = shutil.disk_usage(directory).free
  except OSError:
    free = None
  what = f"step {step}" if step is not None else "a checkpoint"
  kept = (f"the last complete checkpoint, step {last}, is kept" if last is not None
          else "no complete checkpoint was written yet")
  msg = (f"no space left on the device saving {what} to {directory}: needs about "
         f"{_gib(needed) if needed else 'as much as one checkpoint'}, "
         f"{_gib(free) if free is not None else 'unknown'} free — free space or lower "
         f"config.train.keep_checkpoints; {kept}")
  return DiskFull(msg, directory)


# A grow run's stage directories under its workdir (`growth.stages.run_dirs` makes them):
# small/ grown/ large/ for one growth, stage_0/ grown_1/ stage_1/ ... for several.
_STAGE_DIR = re.compile(r"^(small|grown|large|stage_(\d+)|grown_(\d+))$")


def _stage_order(name: str) -> int:
  """Where a stage directory comes in its run: stage_i before grown_{i+1} before stage_{i+1}."""
  m = _STAGE_DIR.match(name)
  if m[2] is not None:
    return 2 * int(m[2])
  if m[3] is not None:
    return 2 * int(m[3]) - 1
  return {"small": 0, "grown": 1, "large": 2}[name]


def _stage_checkpoints(d: epath.Path) -> epath.Path:
  """A stage's checkpoints: a run dir's checkpoints/, a grown dir itself."""
  return d / "checkpoints" if (d / "checkpoints").is_dir() else d


def run_stage(path: str, field: str = "--from", say=None) -> str | None:
  """A grow run's workdir -> the checkpoints of its last stage holding a complete one
  (large/ once it has saved, else the newest before it), said through `say`; None when
  `path` is not a grow run's workdir. Raises ValueError naming the stage directories
  when none holds a complete checkpoint."""
  p = epath.Path(absolute(path))
  if not p.is_dir() or (p / "checkpoints").is_dir() or (STEP_DIR.match(p.name) and
                                                       (p / "state").is_dir()):
    return None
  stages = sorted((d for d in p.iterdir() if _STAGE_DIR.match(d.name) and d.is_dir()),
                  key=lambda d: _stage_order(d.name))
  if not stages:
    return None
  for d in reversed(stages):
    steps = _complete_steps(_stage_checkpoints(d)) if _stage_checkpoints(d).is_dir() else []
    if steps:
      if say is not None:
        later = [x.name for x in stages if _stage_order(x.name) > _stage_order(d.name)]
        note = (f" ({', '.join(f'{x}/' for x in later)} holds none yet)" if later else "")
        say(f"{field}={path}: a grow run's workdir; using its last stage {d.name}/, "
            f"step {steps[-1]}{note}: {_stage_checkpoints(d)}/{steps[-1]}")
      return str(_stage_checkpoints(d))
  names = ", ".join(f"{d.name}/" for d in stages)
  raise ValueError(f"{field}={path!r} is a grow run's workdir, but none of its stages "
                   f"({names}) holds a complete checkpoint yet — let the run save one "
                   f"(config.train.checkpoint_every) or give a step dir such as "
                   f"{p / stages[-1].name / 'checkpoints'}/<step>")


def to_stderr(line: str) -> None:
  """A note on the console's stderr (process 0), apart from a command's own output."""
  jax = sys.modules.get("jax")
  if jax is None or jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def resolve(path: str, step: int | None = None, field: str = "--from", say=to_stderr
            ) -> tuple[str, int]:
  """A checkpoint directory (or a workdir, a grow run's workdir, or one step's directory)
  -> (checkpoints dir, step); which stage of a grow run it picked is said through `say`.

  Local or `gs://`. Fails with a message naming `field` when nothing complete is there.
  """
  given, path = path, absolute(path)
  p = epath.Path(path)
  if not p.is_dir():
    raise ValueError(f"{field}={path!r} does not exist or is not a directory — give a "
                     f"run's workdir, its checkpoints dir or one step's dir")
  if STEP_DIR.match(p.name) and (p / "state").is_dir():
    if not _is_complete(p):
      raise ValueError(f"{field}={path!r} is an incomplete save (no {COMMIT_SUCCESS}) — "
                       f"give its checkpoints dir: the newest complete step is used")
    if step is not None and step != int(p.name):
      raise ValueError(f"{field}={path!r} is step {p.name}, but step {step} was asked for — "
                       f"give its checkpoints dir with --step {step}, or drop --step")
    return str(p.parent), int(p.name)
  stage = run_stage(given, field, say)
  if stage is not None:
    path, p = stage, epath.Path(stage)
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
    path = str(p)
  steps = _complete_steps(p)
  if not steps:
    raise ValueError(f"{field}={path!r} holds no complete growjax checkpoint (no step "
                     f"directory with a 'state' item; incomplete saves are ignored) — give "
                     f"a run's workdir once it has saved (config.train.checkpoint_every), "
                     f"its checkpoints dir or one step's dir")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise ValueError(f"{field}={path!r} has no step {step}; complete steps: {steps} — give "
                     f"one of them as --step, or drop --step for the newest")
  return path, step


def latest_complete_step(path: str) -> int | None:
  """The latest complete step under a checkpoints dir or a workdir (local or `gs://`);
  None when there is none or `path` does not exist."""
  try:
    return resolve(path, say=None)[1]
  except (ValueError, FileNotFoundError):
    return None


def read_meta(directory: str, step: int) -> dict:
  """The `meta` item as plain JSON, without building a manager (cheap)."""
  step_dir = epath.Path(absolute(directory)) / str(step)
  for name in ("meta/metadata", "meta"):
    p = step_dir / name
    if p.exists() and not p.is_dir():
      return _without_step(json.loads(p.read_text()))
  return Checkpoints(directory, use_async=False).meta(step)
