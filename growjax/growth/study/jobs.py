"""How many grid runs to train at a time (`--jobs`): a whole number, or 'auto', which
divides the device's memory limit by what the target's compiled train step needs (a
small target leaves most of a GPU idle, and a sweep is made of small targets).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

AUTO = "auto"


def parse_jobs(value: int | str) -> int | str:
  """--jobs: a whole number >= 1, or 'auto'."""
  if str(value).strip().lower() == AUTO:
    return AUTO
  try:
    n = int(str(value))
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"--jobs={value} must be a whole number >= 1 or auto — e.g. --jobs=3, "
                     f"or --jobs=auto for as many as fit the accelerator's memory")
  return n


def jobs_that_fit(need_bytes: int, limit_bytes: int, most: int) -> int:
  """Runs side by side on one device: each job gets limit/N of it and needs `need_bytes`
  under attention_choice's headroom; at least 1, at most `most`."""
  from growjax.train import memory_probe
  return max(1, min(most, int(memory_probe.HEADROOM * limit_bytes // max(need_bytes, 1))))


def auto_jobs(cfg: ml_collections.ConfigDict, most: int,
              log: Callable[[str], None] = print) -> tuple[int, bool]:
  """--jobs auto: compiles the target model's train step (the grid's largest stage) and
  divides the device's memory limit by what it needs (`compiled.memory_analysis()`).
  Returns (jobs, whether to run them as child processes): (1, False) where the backend
  reports no limit (CPU), which trains in this process."""
  import jax
  from growjax.train import attention_choice, memory_probe
  from growjax.train import state as state_lib
  c = cfg.copy_and_resolve_references()
  if c.model.cudnn_packing == "auto":   # each job chooses its own; size the smaller layout
    c.model.cudnn_packing = "mask"
  setup = state_lib.build(c)
  limit = memory_probe.device_limit(setup.mesh.devices.flat)
  if limit is None:
    log(f"== sweep: --jobs auto: the {jax.default_backend()} backend reports no memory "
        f"limit — one run at a time")
    return 1, False
  need = memory_probe.train_step_bytes(setup)
  n = jobs_that_fit(need, limit, most)
  gib = 2 ** 30
  log(f"== sweep: --jobs auto: the target's train step needs {need / gib:.1f} GiB per "
      f"device of {limit / gib:.1f} GiB ({attention_choice.memory_fraction()}): {n} at a time")
  return n, True

