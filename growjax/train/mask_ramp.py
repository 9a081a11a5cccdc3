"""MSG-style masked growth in training: the mask ramp of a run started from a grown
checkpoint (Yao et al. 2023, "Masked Structural Growth for 2x faster language model
pre-training").

A growth (`growjax.growth.masks.record`) writes into the grown checkpoint's metadata,
for every large layer and every unit of a grown axis (`mlp` neurons, query `heads`,
`embed` components), its mask at ramp 0 (`at_zero`): 0 for a new layer or unit, 1 for
one the small model has, c for a kept unit that width `direct` divided among c copies
(at 0 it alone gives what its c copies give together). With
`config.growth.mask_ramp_steps` R > 0, a run started from that checkpoint at step S
trains with

    mask(step) = at_zero + (1 - at_zero) * clip((step - S) / R, 0, 1)

on each layer's residual writes, each neuron's and query head's output and each embed
component of the embedding and of every residual write (`growjax.model.masked_units`):
whatever the operator, the grown model computes the small model's function at S, and
from S + R on it is the plain grown model.

The values are part of the train state (`TrainState.masks`, so a run resumed mid-ramp
continues bit for bit): each step computes with them and writes the next step's. At
S + R they are all 1; the trainer drops them and switches to the plain train step,
whose program has no mask in it. The ramp's plan (S, R, `at_zero`) is written into
every checkpoint's metadata (`META_KEY`), so a resume knows whether the state it
restores holds masks (a step before S + R) before it reads it.

Not here: which layers and units are new (`growjax.growth.masks`, on the growth side;
the trainer never imports growth), how the model applies the masks (`growjax.model`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import config as config_lib
from growjax.model import EMBED, HEADS, LAYERS, MLP

META_KEY = "mask_ramp"          # a checkpoint's metadata: the plan of the run's ramp
GROWN_KEY = "masks"             # a grown checkpoint's `grown_from`: the at-zero values
AXES = (LAYERS, MLP, HEADS, EMBED)


def encode(values) -> list[list]:
  """Per-unit values as runs `[[value, count], ...]` (metadata stays small: a 7B
  model's 11008 mlp units are two runs)."""
  runs: list[list] = []
  for v in np.asarray(values, np.float64).tolist():
    v = int(v) if float(v).is_integer() else v
    if runs and runs[-1][0] == v:
      runs[-1][1] += 1
    else:
      runs.append([v, 1])
  return runs


def decode(runs: list[list]) -> tuple[float, ...]:
  return tuple(float(v) for v, n in runs for _ in range(int(n)))


@dataclasses.dataclass(frozen=True)
class Plan:
  """The ramp of one grown run: from step `start` over `ramp` steps; `at_zero` holds
  (axis, per-unit mask at ramp 0) for the axes that have new layers or units."""
  start: int
  ramp: int
  at_zero: tuple[tuple[str, tuple[float, ...]], ...]

  @property
  def end(self) -> int:
    """The first step whose masks are all 1: from here on the plain train step."""
    return self.start + self.ramp

  def active(self, step: int) -> bool:
    return int(step) < self.end

  def values(self, step: jax.Array) -> dict[str, jax.Array]:
    """The masks at `step` (traceable: the train step writes the next step's)."""
    m = jnp.clip((step - self.start).astype(jnp.float32) / self.ramp, 0.0, 1.0)
    out = {}
    for axis, at_zero in self.at_zero:
      v = jnp.asarray(np.asarray(at_zero, np.float32))
      out[axis] = v + (1.0 - v) * m
    return out

  def shardings(self, mesh) -> dict[str, NamedSharding]:
    return {axis: NamedSharding(mesh, P()) for axis, _ in self.at_zero}

  def abstract(self, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    return {axis: jax.ShapeDtypeStruct((len(v),), jnp.float32,
                                       sharding=NamedSharding(mesh, P()))
            for axis, v in self.at_zero}

  def initial(self, mesh, step: int) -> dict[str, jax.Array]:
    """The masks at `step` on `mesh` (replicated), by the same arithmetic as the step's."""
    return jax.jit(self.values, out_shardings=self.shardings(mesh))(
        jnp.asarray(step, jnp.int32))

  def to_meta(self) -> dict:
    return {"start": self.start, "ramp": self.ramp,
            "at_zero": {axis: encode(v) for axis, v in self.at_zero}}

  @classmethod
  def from_meta(cls, d: dict) -> "Plan":
    return cls(int(d["start"]), int(d["ramp"]),
               tuple((a, decode(d["at_zero"][a])) for a in AXES if a in d["at_zero"]))


def restored(meta: dict) -> Plan | None:
  """The plan a run's own checkpoint records (None: no ramp in this run)."""
  d = (meta or {}).get(META_KEY)
  return Plan.from_meta(d) if d else None


def check_params_alone(meta: dict, step: int, where: str) -> None:
  """Refuses a checkpoint inside its mask ramp where its params are used alone (eval,
  sample, export): without the masks they are not the model the run trains."""
  plan = restored(meta)
  if plan is not None and plan.active(step):
    raise ValueError(f"{where} is step {step}, inside its MSG mask ramp (steps "
                     f"{plan.start}..{plan.end}): its params without the masks are not the "
                     f"model it trains — use a checkpoint from step {plan.end} on, or train "
                     f"past the ramp first")


def from_grown(meta: dict, step: int, ramp: int, where: str) -> Plan | None:
  """The ramp of a run that starts from a grown checkpoint (its `meta`, at `step`) with
  `config.growth.mask_ramp_steps` = `ramp`; None when `ramp` is 0. `where` names the
  checkpoint in errors."""
  if not ramp:
    return None
  grown = (meta or {}).get("grown_from") or {}
  record = grown.get(GROWN_KEY)
  if not record:
    why = ("was not grown by growjax" if not grown else
           grown.get("masks_unavailable") or "records no new layers or units")
    raise ValueError(f"config.growth.mask_ramp_steps={ramp} but {where} {why}, so nothing "
                     f"can enter through a mask — grow it with `growjax grow` (an operator "
                     f"other than learn), or set config.growth.mask_ramp_steps=0")
  return Plan(int(step), int(ramp),
              tuple((a, decode(record[a])) for a in AXES if a in record))


check_steps = config_lib.check_mask_ramp_steps   # growth.masks checks it too
