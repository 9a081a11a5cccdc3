"""What a compiled program needs per device, read from the compiler, and what a device
has: the one memory probe below the trainer's choices (`attention_choice`) and the
study's (`growth.study.jobs`, `growjax sweep --jobs auto`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from growjax.train import step as step_lib

HEADROOM = 0.97   # of bytes_limit: XLA's own buffers outside the program's


def program_bytes(compiled) -> int:
  """Per-device bytes a compiled program holds at its peak: arguments, outputs not
  aliased to arguments (donated state), and temporaries."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def device_limit(devices) -> int | None:
  """The smallest memory limit of `devices` (None where the backend does not say)."""
  limits = []
  for d in devices:
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def fits(need: int, limit: int | None) -> bool:
  """Whether a program of `need` bytes per device fits under `limit` (unknown: yes)."""
  return limit is None or need <= HEADROOM * limit


def abstract_batch(setup) -> dict:
  """The global batch the train step takes, as shapes (with document keys)."""
  from growjax.data.packing import BATCH_KEYS
  shape = (setup.cfg.train.global_batch_size, setup.cfg.data.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=setup.batch_sharding)
          for k in BATCH_KEYS}


def train_step_bytes(setup) -> int:
  """Per-device bytes of the run's train step, compiled for its mesh (nothing runs)."""
  with jax.set_mesh(setup.mesh):
    compiled = step_lib.make_train_step(setup).lower(
        step_lib.step_abstract_state(setup), abstract_batch(setup)).compile()
  return program_bytes(compiled)
