"""Multi-controller start-up: one process per host (or per GPU) joins one JAX runtime.

`jax.distributed.initialize()` detects Cloud TPU pod slices, SLURM and Open MPI
by itself; explicit flags cover every other cluster. Called once, before any
device is touched, by the `growjax` commands.
"""

from __future__ import annotations

import os
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


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0,
                     process_id: int = -1) -> bool:
  """Initialises jax.distributed when flags or the environment ask for it."""
  if coordinator_address or num_processes:
    if not (coordinator_address and num_processes and process_id >= 0):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together; "
                       f"got {coordinator_address!r}, {num_processes}, {process_id}.")
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  if _env_says_multiprocess():
    _cpu_collectives()
    jax.distributed.initialize()
    return True
  return False


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
