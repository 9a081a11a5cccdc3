"""Multi-controller start-up: one process per host (or per GPU) joins one JAX runtime.

`jax.distributed.initialize()` detects Cloud TPU pod slices, SLURM and Open MPI
by itself; explicit flags cover every other cluster. Called once, before any
device is touched, by the `growjax` commands.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def _env_says_multiprocess() -> bool:
  if os.environ.get("GROWJAX_DISTRIBUTED") == "1":  # set by launch/tpu_vm.sh
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  # Cloud TPU VM pod slices list more than one worker host.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _cpu_collectives() -> None:
  """Cross-process collectives on the CPU backend (tests, CPU clusters) go over gloo;
  accelerator backends are unaffected."""
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # an older or newer jax without the option
    pass


HEARTBEAT_ENV = "GROWJAX_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_S = 100   # jax.distributed.initialize's own default


def heartbeat_timeout(seconds: int = 0) -> int:
  """--heartbeat_timeout, else $GROWJAX_HEARTBEAT_TIMEOUT_S, else JAX's default."""
  if seconds > 0:
    return seconds
  value = os.environ.get(HEARTBEAT_ENV, "")
  if not value:
    return DEFAULT_HEARTBEAT_S
  if not value.isdigit() or int(value) <= 0:
    raise ValueError(f"{HEARTBEAT_ENV}={value!r} is not a positive whole number of seconds "
                     f"— set it to e.g. 60, or unset it for JAX's default "
                     f"({DEFAULT_HEARTBEAT_S})")
  return int(value)


def lost_process_message(lost: list[int], timeout: int) -> str:
  who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}" if lost
         else "the coordinator (process 0)")
  return (f"lost {who}: no heartbeat for {timeout} s (--heartbeat_timeout) — check that "
          f"host, then rerun the same command on every host to resume from the last "
          f"checkpoint")


class Watchdog:
  """growjax's own heartbeat through the coordination service's key-value store.

  JAX's answer to a lost process is a C++ abort with a stack dump on every survivor
  after its heartbeat timeout (its Python callback for that cannot be called: the
  status it passes has no Python type). Each process here writes a counter every
  timeout/5 s and reads the others'; a peer whose counter stands still for `timeout`
  s, or a coordinator that stops answering, ends this process with one line naming
  it (exit 1) before JAX's own, longer, timeout. A process that finishes says so
  (`done`), so its peers do not count it lost."""

  KEY = "growjax_heartbeat/"

  def __init__(self, client, process_id: int, num_processes: int, timeout: int):
    self.client, self.me, self.timeout = client, process_id, timeout
    now = time.monotonic()
    self.peers = {p: ("", now) for p in range(num_processes) if p != process_id}
    self.answered = now     # the coordinator's last answer
    self.stopped = threading.Event()
    self.lost: list[int] | None = None
    for target in (self._beat, self._judge):
      threading.Thread(target=target, name="growjax-heartbeat", daemon=True).start()

  def _beat(self):
    beat = 0
    while not self.stopped.is_set():
      beat += 1
      try:
        self.client.key_value_set(f"{self.KEY}{self.me}", str(beat), allow_overwrite=True)
        for p, (seen, since) in list(self.peers.items()):
          try:
            value = self.client.key_value_try_get(f"{self.KEY}{p}")
          except Exception:  # noqa: BLE001 - NOT_FOUND: not started yet
            continue
          if value == "done":
            self.peers.pop(p)
          elif value != seen:
            self.peers[p] = (value, time.monotonic())
        self.answered = time.monotonic()
      except Exception:  # noqa: BLE001 - the coordinator did not answer; _judge decides
        pass
      self.stopped.wait(self.timeout / 5)

  def _judge(self):
    while not self.stopped.wait(min(1.0, self.timeout / 5)):
      now = time.monotonic()
      lost = sorted(p for p, (_, since) in self.peers.items() if now - since > self.timeout)
      if lost or now - self.answered > self.timeout:
        self.lost = lost
        from growjax import console
        console.exit_now(lost_process_message(lost, self.timeout), 1)

  def done(self):
    self.stopped.set()
    try:
      self.client.key_value_set(f"{self.KEY}{self.me}", "done", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - nobody left to tell
      pass


_watchdog: list[Watchdog] = []


def multiprocess() -> bool:
  """Whether this process runs a growjax watchdog (jax.distributed with peers)."""
  return bool(_watchdog)


def finish(failed: bool, wait_s: float | None = None) -> None:
  """End of a command. A multi-process command that failed first gives the watchdog
  time to name a lost peer (a collective fails at once when a peer's socket closes),
  then the caller exits without JAX's teardown, which would wait for the lost peer."""
  if not _watchdog:
    return
  dog = _watchdog[0]
  if failed:
    deadline = time.monotonic() + (dog.timeout + 2 if wait_s is None else wait_s)
    while time.monotonic() < deadline:   # the watchdog exits the process if it finds one
      time.sleep(0.2)
  else:
    dog.done()


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0,
                     process_id: int = -1, heartbeat_timeout_s: int = 0) -> bool:
  """Initialises jax.distributed when flags or the environment ask for it. A process
  that stops sending heartbeats for `heartbeat_timeout(heartbeat_timeout_s)` seconds
  ends every other with one line naming it, exit 1 (`Watchdog`)."""
  timeout = heartbeat_timeout(heartbeat_timeout_s)
  jax_timeout = 2 * timeout + 10   # JAX's abort comes after growjax's one line
  if coordinator_address or num_processes:
    if not (coordinator_address and num_processes and process_id >= 0):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together; "
                       f"got {coordinator_address!r}, {num_processes}, {process_id}.")
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=jax_timeout)
  elif _env_says_multiprocess():
    _cpu_collectives()
    jax.distributed.initialize(heartbeat_timeout_seconds=jax_timeout)
  else:
    return False
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if client is not None and jax.process_count() > 1:
    _watchdog[:] = [Watchdog(client, jax.process_index(), jax.process_count(), timeout)]
  return True


def agreed(values: Sequence[int]) -> list[int]:
  """Process 0's `values` on every process.

  Decisions read off a filesystem (which stage to run, which step to resume) are
  made once: on an eventually consistent store or per-host disks, processes can
  see different things, and processes that act on different views deadlock.
  """
  if jax.process_count() == 1:
    return [int(v) for v in values]
  out = multihost_utils.broadcast_one_to_all(np.asarray(values, dtype=np.int64))
  return [int(v) for v in np.asarray(out)]


def check_shared_workdir(workdir: str) -> None:
  """Refuses a workdir the processes do not share.

  Orbax writes each process's shards under the one workdir; on per-host local
  disks every host would hold a part of each checkpoint that no host can restore.
  Process 0 writes a marker, every process looks for it, and all agree.
  """
  if jax.process_count() == 1:
    return
  from etils import epath
  root = epath.Path(workdir)
  [token] = agreed([int.from_bytes(os.urandom(3), "little")])
  marker = root / f".growjax-shared-{token}"
  if jax.process_index() == 0:
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("growjax: checks that every process sees this workdir\n")
  multihost_utils.sync_global_devices("growjax shared workdir: marker written")
  seen = np.asarray(multihost_utils.process_allgather(np.int32(marker.exists())))
  multihost_utils.sync_global_devices("growjax shared workdir: marker checked")
  if jax.process_index() == 0:
    marker.unlink()
  missing = [int(p) for p in np.flatnonzero(seen == 0)]
  if missing:
    raise ValueError(
        f"workdir {workdir!r} is not shared: processes {missing} do not see what process 0 "
        f"writes there — use a gs:// path or a filesystem every host mounts.")
