"""How a process's loaded rows become global batch arrays: each device gets exactly the
rows its index in the batch sharding names, whatever the mesh and process layout."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding

from growjax import sharding


@dataclasses.dataclass(frozen=True)
class HostBatches:
  """How a process's loaded rows become global batch arrays.

  `rows` are the global batch rows this process's devices hold (read off the
  batch sharding); the loader reads only those, and `to_global` hands each
  device exactly the rows its index in the sharding names, whatever the mesh
  and process layout.
  """
  sharding: NamedSharding
  global_batch_size: int
  rows: np.ndarray

  @classmethod
  def of(cls, batch_sharding: NamedSharding, global_batch_size: int) -> "HostBatches":
    return cls(batch_sharding, global_batch_size,
               sharding.process_rows(batch_sharding, global_batch_size))

  def to_global(self, batch: dict) -> dict:
    position = {int(r): i for i, r in enumerate(self.rows)}

    def arrays(v):
      v = np.asarray(v)
      if len(v) != len(self.rows):
        raise ValueError(f"got {len(v)} rows for the {len(self.rows)} this process holds.")

      def device_rows(index):
        wanted = range(*index[0].indices(self.global_batch_size))
        return v[[position[r] for r in wanted]][(slice(None), *index[1:])]

      return jax.make_array_from_callback((self.global_batch_size, *v.shape[1:]),
                                          self.sharding, device_rows)

    return {k: arrays(v) for k, v in batch.items()}


def to_global(batch: dict, batch_sharding: NamedSharding) -> dict:
  """A whole global batch (numpy, on every process) -> global arrays over the mesh."""
  n = len(next(iter(batch.values())))
  return HostBatches(batch_sharding, n, np.arange(n)).to_global(batch)
