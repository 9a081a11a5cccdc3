"""One writer per output directory: an exclusive lease, `DIR/.growjax-lease.json`.

Two commands writing one directory interleave its metrics.jsonl, overwrite each other's
checkpoints, and orbax of one deletes the other's in-flight temporaries. So every command
that writes a directory holds its lease (`with hold(DIR, command="train"):`):

- taken atomically: written complete under a temporary name and hard-linked to the lease
  name, which fails if it exists (a reader never sees half a lease); on gs:// an upload
  with the generation precondition 0 (the object must not exist);
- refreshed by a daemon thread every $GROWJAX_LEASE_HEARTBEAT_S (30 s), atomically
  (os.replace; a generation-matched upload on gs://), as long as it is still its own;
- a live holder refuses a second writer in one line naming it; a holder whose process is
  gone (same host, no such pid) or whose heartbeat is stale (older than
  $GROWJAX_LEASE_STALE_S, default 10 heartbeats) is taken over with one warning line,
  atomically too: a replace of exactly the lease that was read (under a flock of the
  directory locally, a generation precondition on gs://), so of racers one wins;
- removed at the end, only if it is still this process's.

Re-entrant: a process holding DIR holds every directory under it. Multi-process runs:
process 0 takes the lease and every process agrees on the outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid

from etils import epath

LEASE_NAME = ".growjax-lease.json"
HEARTBEAT_ENV = "GROWJAX_LEASE_HEARTBEAT_S"
STALE_ENV = "GROWJAX_LEASE_STALE_S"
DEFAULT_HEARTBEAT_S = 30.0
STALE_BEATS = 10


def is_lease_file(name: str) -> bool:
  """The lease or one of its temporaries: what "is this directory empty?" checks skip."""
  return name == LEASE_NAME or name.startswith(LEASE_NAME + ".")


def _absolute(directory) -> str:
  path = os.fspath(directory)
  if path.startswith("gs://"):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def _env_seconds(name: str, default: float) -> float:
  value = os.environ.get(name, "")
  try:
    seconds = float(value) if value else default
  except ValueError:
    raise ValueError(f"${name}={value!r} is not a number of seconds — e.g. {name}=30") \
        from None
  if seconds <= 0:
    raise ValueError(f"${name}={value} must be positive — e.g. {name}=30")
  return seconds


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# ------------------------------------------------------------------------------ stores
# Each store reads, creates, refreshes, takes over and deletes the one lease object.
# `version` says which content a change expects: the bytes locally, the generation on
# gs://. Every method returns None / False where the lease is not as expected.


class _Local:
  """Changes run under an exclusive flock of the directory (released by the kernel if the
  process dies), so a takeover or a heartbeat is a read-compare-replace that no other
  lease taker interleaves with. The lease itself is created by a hard link, which fails if
  it exists: atomic even where flock is not."""

  def __init__(self, directory: str):
    self.directory = directory
    self.path = os.path.join(directory, LEASE_NAME)

  @contextlib.contextmanager
  def _serialized(self, wait_s: float = 10.0):
    try:
      fd = os.open(self.directory, os.O_RDONLY)
    except OSError:
      yield
      return
    try:
      deadline = time.monotonic() + wait_s
      while True:   # non-blocking tries: a stopped (SIGSTOP) holder does not hang us
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          break
        except BlockingIOError:
          if time.monotonic() > deadline:
            break
          time.sleep(0.01)
        except OSError:   # no flock here (some network filesystems)
          break
      yield
    finally:
      os.close(fd)   # releases the lock

  def _write_tmp(self, data: bytes) -> str:
    tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    return tmp

  def _read(self):
    try:
      with open(self.path, "rb") as f:
        return f.read()
    except FileNotFoundError:
      return None

  def read(self):
    for _ in range(5):
      data = self._read()
      if data is None:
        return None
      if data:   # empty: being written by the O_EXCL fallback
        return data, data
      time.sleep(0.05)
    return data, data

  def create(self, data: bytes):
    tmp = self._write_tmp(data)
    try:
      with self._serialized():
        os.link(tmp, self.path)   # fails if the lease exists: the atomic test-and-set
      return data
    except FileExistsError:
      return None
    except OSError:   # a filesystem without hard links (e.g. gcsfuse)
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return None
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      return data
    finally:
      os.unlink(tmp)

  def refresh(self, data: bytes, version: bytes):
    """Replaces the lease with `data` if it still holds exactly `version`."""
    tmp = self._write_tmp(data)
    try:
      with self._serialized():
        if self._read() != version:
          return None
        os.replace(tmp, self.path)
        return data
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)

  take_over = refresh

  def delete(self, version: bytes) -> bool:
    with self._serialized():
      if self._read() != version:
        return False
      os.unlink(self.path)
      return True

  def move(self, to_directory: str) -> None:
    os.rename(self.path, os.path.join(to_directory, LEASE_NAME))


class _Gcs:
  def __init__(self, directory: str):
    try:
      from google.cloud import storage
    except ImportError:
      raise ValueError(f"{directory}: a gs:// output's lease needs google-cloud-storage — "
                       f"pip install 'growjax[gcs]'") from None
    bucket, _, prefix = directory.removeprefix("gs://").partition("/")
    self.name = f"{prefix.strip('/')}/{LEASE_NAME}" if prefix.strip("/") else LEASE_NAME
    self.bucket = storage.Client().bucket(bucket)

  def read(self):
    from google.api_core import exceptions
    for _ in range(5):
      blob = self.bucket.get_blob(self.name)
      if blob is None:
        return None
      try:
        return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
      except (exceptions.NotFound, exceptions.PreconditionFailed):
        continue   # replaced between the metadata and the download: read again
    return None

  def _upload(self, data: bytes, generation: int):
    from google.api_core import exceptions
    blob = self.bucket.blob(self.name)
    try:
      blob.upload_from_string(data, content_type="application/json",
                              if_generation_match=generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return None
    return blob.generation

  def create(self, data: bytes):
    return self._upload(data, 0)

  def refresh(self, data: bytes, version: int):
    return self._upload(data, version)

  def take_over(self, data: bytes, version: int):
    return self._upload(data, version)

  def delete(self, version: int) -> bool:
    from google.api_core import exceptions
    try:
      self.bucket.blob(self.name).delete(if_generation_match=version)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      return False
    return True

  def move(self, to_directory: str) -> None:
    epath.Path(f"gs://{self.bucket.name}/{self.name}").rename(
        epath.Path(to_directory) / LEASE_NAME)


def _store(directory: str):
  return _Gcs(directory) if directory.startswith("gs://") else _Local(directory)


# ------------------------------------------------------------------------------- lease


def _pid_gone(pid: int) -> bool:
  if pid == os.getpid():   # not held by this process (else re-entrant): a reused pid
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except (PermissionError, OverflowError, ValueError):
    return False
  return False


def _holder(record: dict | None) -> str:
  if record is None:
    return "an unknown holder (its lease file is unreadable)"
  return (f"growjax {record.get('command', '?')} (pid {record.get('pid', '?')} on host "
          f"{record.get('host', '?')}")


def _why_stale(record: dict | None, heartbeat_s: float, stale_s: float | None) -> str | None:
  """Why the holder of `record` no longer writes (None: it may well)."""
  if record is None:
    return "its lease file is unreadable"
  if record.get("host") == socket.gethostname() and _pid_gone(int(record.get("pid", -1))):
    return "its process is gone"
  limit = stale_s or STALE_BEATS * max(heartbeat_s, float(record.get("heartbeat_s", 0)))
  age = time.time() - float(record.get("heartbeat", 0))
  if age > limit:
    return f"its heartbeat is {age:.0f} s old (stale after {limit:.0f} s)"
  return None


def _decode(data: bytes) -> dict | None:
  try:
    record = json.loads(data)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def _encode(record: dict) -> bytes:
  return (json.dumps(record, indent=1) + "\n").encode()


class Lease:
  """A lease this process holds; `release()` stops its heartbeat and removes it."""

  def __init__(self, store, label: str, record: dict, version, heartbeat_s: float):
    self.store, self.label, self.record, self.version = store, label, record, version
    self.heartbeat_s = heartbeat_s
    self.lost = False
    self._lock = threading.Lock()   # a heartbeat never runs while the lease moves
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name=f"growjax lease heartbeat {label}")
    self._thread.start()

  def beat(self) -> None:
    with self._lock:
      if self.lost:
        return
      record = dict(self.record, heartbeat=time.time())
      try:
        version = self.store.refresh(_encode(record), self.version)
      except Exception:  # noqa: BLE001 - a flaky filesystem or network: the next beat tries
        return
      if version is None:   # taken over: stop quietly, release() says so
        self.lost = True
        return
      self.record, self.version = record, version

  def _run(self) -> None:
    while not self._stop.wait(self.heartbeat_s) and not self.lost:
      self.beat()

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    try:
      with self._lock:
        removed = not self.lost and self.store.delete(self.version)
      current = None if removed else self.store.read()
    except Exception as e:  # noqa: BLE001 - the command's own outcome matters more
      print(f"warning: could not remove the lease on {self.label} ({e}) — "
            f"the next command there takes it over once its heartbeat is stale",
            file=sys.stderr, flush=True)
      return
    if not removed:
      other = _decode(current[0]) if current else None
      print(f"warning: the lease on {self.label} was taken over or removed while this "
            f"command ran" + (f", now held by {_holder(other)})" if other else "")
            + " — check that no other command wrote there meanwhile", file=sys.stderr,
            flush=True)


def _take(directory: str, label: str, flag: str, command: str, heartbeat_s: float,
          stale_s: float | None) -> Lease:
  store = _store(directory)
  now = time.time()
  record = {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
            "started": now, "started_utc": _utc(now), "heartbeat": now,
            "heartbeat_s": heartbeat_s, "argv": sys.argv, "token": uuid.uuid4().hex}
  data = _encode(record)
  holder = None
  for _ in range(5):
    version = store.create(data)
    if version is not None:
      return Lease(store, label, record, version, heartbeat_s)
    current = store.read()
    if current is None:   # released meanwhile
      continue
    raw, seen = current
    holder = _decode(raw)
    why = _why_stale(holder, heartbeat_s, stale_s)
    if why is None:
      break
    version = store.take_over(data, seen)
    if version is not None:
      print(f"warning: taking over the lease on {label} from {_holder(holder)}"
            f"{')' if holder else ''}: {why}", file=sys.stderr, flush=True)
      return Lease(store, label, record, version, heartbeat_s)
  if holder is None:
    raise ValueError(f"{label} is in use: its lease {directory}/{LEASE_NAME} keeps changing "
                     f"— wait for the other command to finish, or use another {flag}")
  age = time.time() - float(holder.get("heartbeat", 0))
  raise ValueError(
      f"{label} is in use by {_holder(holder)}, started "
      f"{_utc(float(holder.get('started', 0)))}, heartbeat {age:.0f} s ago) — wait for it "
      f"to finish, use another {flag}, or stop that process")


_held: dict[str, Lease | None] = {}   # this process's leases (None: a non-zero process's)


def _multiprocess() -> bool:
  jax = sys.modules.get("jax")   # never starts a backend: only after jax.distributed
  return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def _agree_or_raise(error: BaseException | None) -> None:
  """Process 0's outcome on every process: its one-line refusal raised everywhere."""
  import jax
  from growjax import distributed
  text = str(error).encode() if error is not None else b""
  kind = 2 if isinstance(error, ValueError) else 1
  n, kind = distributed.agreed([len(text), kind])
  if not n:
    return
  text = bytes(distributed.agreed(list(text) if jax.process_index() == 0 else [0] * n))
  if error is not None:
    raise error
  raise (ValueError if kind == 2 else RuntimeError)(text.decode())


@contextlib.contextmanager
def hold(directory, command: str = "train", flag: str = "--workdir", label: str = ""):
  """Holds the lease on `directory` (created if missing) while the block runs; raises
  ValueError naming the live holder if another command writes there. Messages name the
  directory as `label` (default `FLAG=DIR`) and suggest another `flag`."""
  key = _absolute(directory)
  if any(key == k or key.startswith(k + "/") for k in _held):
    yield
    return
  label = label or f"{flag}={directory}"
  heartbeat_s = _env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)
  stale_s = _env_seconds(STALE_ENV, 1.0) if os.environ.get(STALE_ENV) else None
  multi = _multiprocess()
  lease, created = None, False
  if not multi or sys.modules["jax"].process_index() == 0:
    error = None
    try:
      path = epath.Path(key)
      if path.exists() and not path.is_dir():
        raise ValueError(f"{label} is a file — give a directory (it is created if missing)")
      created = not path.exists()
      path.mkdir(parents=True, exist_ok=True)
      lease = _take(key, label, flag, command, heartbeat_s, stale_s)
    except Exception as e:  # noqa: BLE001 - agreed below, then raised
      error = e
    if multi:
      _agree_or_raise(error)
    elif error is not None:
      raise error
  else:
    _agree_or_raise(None)
  _held[key] = lease
  try:
    yield
  finally:
    del _held[key]
    if lease is not None:
      lease.release()
      if created and not key.startswith("gs://"):
        with contextlib.suppress(OSError):
          os.rmdir(key)   # made only for the lease and left empty: leave no trace


@contextlib.contextmanager
def carried(directory, staging):
  """For a publish that renames `staging` onto `directory` (which must go first, e.g.
  hf.py): this process's lease on `directory` moves into `staging`, and is in place again
  once `staging` is renamed; no heartbeat runs meanwhile. A no-op without such a lease."""
  key = _absolute(directory)
  lease = _held.get(key)
  if lease is None or lease.lost:
    yield
    return
  with lease._lock:
    lease.store.move(os.fspath(staging))
    try:
      yield
    except BaseException:
      back = epath.Path(staging) / LEASE_NAME
      if back.exists():
        epath.Path(key).mkdir(parents=True, exist_ok=True)
        back.rename(epath.Path(key) / LEASE_NAME)
      raise
    finally:
      current = lease.store.read()
      if current is not None and (_decode(current[0]) or {}).get("token") == \
          lease.record["token"]:
        lease.version = current[1]   # a gs:// copy has a new generation
