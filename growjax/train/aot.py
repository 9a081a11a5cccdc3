"""Ahead-of-time compiles for a Cloud TPU slice with the real TPU compiler, on any host.

With libtpu installed (the `tpu` extra), `jax.experimental.topologies` describes a TPU
slice (`v5e-8`, `v5p-256`, ... and several slices) as compile-only devices on a CPU
host. A run's state is built on them (`state.build`), its steps are lowered and
compiled by libtpu exactly as the pod would compile them, and the compiler's own memory
plan, out-of-memory verdict and cost model come back. Nothing is allocated or run.

This module is one program at a time (`compile_train_step`, `compile_eval_step`,
`compile_lowered`) and the search of a batch and remat policy that fit (`estimate`);
which programs a run executes (its stages and growths) is `growjax.growth.compile_run`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from growjax.train import memory_probe
from growjax.train import metrics as metrics_lib
from growjax.train import state as state_lib
from growjax.train import step as step_lib

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: HBM per chip (GiB), dense bf16 peak (TFLOP/s, as
  `metrics.PEAK_TFLOPS`), TensorCores per chip in its accelerator name (`v5p-8` is 4
  chips), and the dimensions of its slices' torus."""
  name: str
  hbm_gib: float
  peak_tflops: float
  cores_per_chip: int
  dims: int


CHIPS = {
    "v4": Chip("v4", 32, 275.0, 2, 3),
    "v5e": Chip("v5e", 16, 197.0, 1, 2),
    "v5p": Chip("v5p", 95, 459.0, 2, 3),
    "v6e": Chip("v6e", 32, 918.0, 1, 2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
TOPOLOGY_SYNTAX = "v4-N, v5e-N (v5litepod-N), v5p-N or v6e-N, as Cloud TPU names them"


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice (or `slices` equal slices) of one TPU generation, by its Cloud TPU name."""
  name: str
  chip: Chip
  chips: int         # per slice
  shape: tuple[int, ...]
  slices: int = 1

  @property
  def topology_name(self) -> str:
    """libtpu's spelling, e.g. 'v5e:2x4'."""
    return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

  @property
  def num_chips(self) -> int:
    return self.chips * self.slices

  @property
  def hbm_bytes(self) -> int:
    return int(self.chip.hbm_gib * GIB)

  def describe(self) -> str:
    where = f"{self.name} ({self.topology_name}, {self.chips} chips"
    return where + (f") x {self.slices} slices" if self.slices > 1 else ")")


def torus_shape(chip: Chip, chips: int) -> tuple[int, ...]:
  """The slice shape Cloud TPU gives `chips` chips: 2x4 for v5e-8, 4x4x8 for v5p-256."""
  if chip.dims == 2:
    a = 2 ** (int(math.log2(chips)) // 2)
    return (a, chips // a)
  dims = [2, 2, 1]
  while math.prod(dims) < chips:
    small = min(dims)
    i = 2 if len(set(dims)) == 1 else max(j for j, d in enumerate(dims) if d == small)
    dims[i] *= 2
  return tuple(dims)


def parse_topology(name: str, slices: int = 1) -> Topology:
  """`v5e-8`, `v5litepod-16`, `v5p-256`, `v6e-8` -> a Topology; one ValueError naming the
  flag and the fix for anything else."""
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
  gen = ALIASES.get(m[1], m[1]) if m else None
  if not m or gen not in CHIPS:
    raise ValueError(f"--topology={name!r} is not a TPU slice name — give {TOPOLOGY_SYNTAX}, "
                     f"e.g. --topology=v5e-8")
  chip = CHIPS[gen]
  cores = int(m[2])
  chips = cores // chip.cores_per_chip
  least = 4 if chip.dims == 3 else 1
  if cores % chip.cores_per_chip or chips < least or chips & (chips - 1):
    per = f"{chip.cores_per_chip} TensorCores per chip, " if chip.cores_per_chip > 1 else ""
    raise ValueError(f"--topology={name!r}: {gen} slices hold a power of two of chips "
                     f"({per}at least {least} chip{'s' if least > 1 else ''}) — e.g. "
                     f"--topology={gen}-{least * chip.cores_per_chip * 2}")
  if slices < 1:
    raise ValueError(f"--slices={slices} must be at least 1")
  return Topology(name, chip, chips, torus_shape(chip, chips), slices)


LIBTPU_MISSING = ("libtpu is not installed, and the TPU compiler comes with it — "
                  "pip install 'growjax[tpu]' (or 'jax[tpu]=={jax}') on this host; no TPU "
                  "is needed")


def check_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(LIBTPU_MISSING.format(jax=jax.__version__))


@functools.cache
def topology_devices(topology_name: str, slices: int) -> tuple:
  """The compile-only devices of a slice (several: `slice_index` tells them apart)."""
  check_libtpu()
  # More than one libtpu process may run on a host (tests, a sweep's compile jobs).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  kw = {"num_slices": slices} if slices > 1 else {}
  return tuple(topologies.get_topology_desc(topology_name, "tpu", **kw).devices)


def devices(topo: Topology) -> list:
  return list(topology_devices(topo.topology_name, topo.slices))


# ------------------------------------------------------------------------ one program


@dataclasses.dataclass
class Program:
  """One compiled program's per-chip memory (bytes), the compiler's verdict and cost.

  `total` is what the program holds at its peak: arguments + outputs not aliased to
  arguments (the donated state) + temporaries. `oom` is the compiler's own
  out-of-memory line where it refused the program (the byte fields are then 0)."""
  name: str
  what: str
  params: int = 0
  opt_state: int = 0
  arguments: int = 0
  outputs: int = 0
  aliased: int = 0
  temporaries: int = 0
  total: int = 0
  hbm: int = 0
  compile_s: float = 0.0
  oom: str = ""
  flops: float | None = None            # per chip, from compiled.cost_analysis()
  optimal_seconds: float | None = None  # the compiler's bound; None where it gives none
  mosaic_calls: int = 0                 # Pallas TPU kernels (splash) in the program
  bound: dict | None = None             # the step-time bound of a train step (`bound`)

  @property
  def fits(self) -> bool:
    return not self.oom

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["fits"] = self.fits
    return out


def per_chip_bytes(tree) -> int:
  """Bytes one chip holds of a tree of sharded ShapeDtypeStructs (its largest shard)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def oom_line(error: BaseException) -> str | None:
  """The compiler's out-of-memory message as one line, or None for any other error."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  line = next((l for l in text.splitlines() if "Ran out of memory" in l), text.splitlines()[0])
  return re.sub(r"^.*?(Ran out of memory)", r"\1", line.strip()).rstrip(".")


def compile_lowered(name: str, what: str, lower: Callable[[], Any], hbm: int,
                    state=None) -> Program:
  """Lowers (under the program's own mesh context, in `lower`) and compiles one program."""
  t0 = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:
    line = oom_line(e)
    if line is None:
      raise
    return Program(name, what, hbm=hbm, compile_s=time.perf_counter() - t0, oom=line)
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  prog = Program(name, what, arguments=int(m.argument_size_in_bytes),
                 outputs=int(m.output_size_in_bytes), aliased=int(m.alias_size_in_bytes),
                 temporaries=int(m.temp_size_in_bytes),
                 total=memory_probe.program_bytes(compiled), hbm=hbm, compile_s=seconds,
                 mosaic_calls=compiled.as_text().count('custom_call_target="tpu_custom_call"'))
  if state is not None:
    prog.params = per_chip_bytes(state.params)
    prog.opt_state = per_chip_bytes(state.opt_state)
  cost = _cost(compiled)
  prog.flops = cost.get("flops")
  seconds = cost.get("optimal_seconds")
  prog.optimal_seconds = seconds if seconds is not None and seconds > 0 else None
  return prog


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older JAX: one dict per computation
    cost = cost[0] if cost else {}
  return dict(cost or {})


def build(cfg: ml_collections.ConfigDict, topo: Topology) -> state_lib.Setup:
  return state_lib.build(cfg, devices(topo))


def _batch_what(setup: state_lib.Setup) -> str:
  cfg, chips = setup.cfg, setup.mesh.size
  b = cfg.train.global_batch_size
  per = f", {b / chips:g} per chip" if b % chips == 0 or b > chips else ""
  return f"batch {b}x{cfg.data.seq_len}{per}"


def compile_train_step(setup: state_lib.Setup, hbm: int, name: str = "train step"
                       ) -> Program:
  """The run's train step (`step.make_train_step`), lowered under `jax.set_mesh` of the
  topology's devices as `growjax train` lowers it."""
  def lower():
    with jax.set_mesh(setup.mesh):
      return step_lib.make_train_step(setup).lower(step_lib.step_abstract_state(setup),
                                                   memory_probe.abstract_batch(setup))
  m = setup.model_cfg
  what = (f"{m.num_layers}L x {m.embed_dim} ({m.num_params() / 1e9:.2f}B), "
          f"{_batch_what(setup)}, remat {m.remat_policy}")
  return compile_lowered(name, what, lower, hbm, setup.abstract_state)


def compile_eval_step(setup: state_lib.Setup, hbm: int, name: str = "eval step") -> Program:
  def lower():
    with jax.set_mesh(setup.mesh):
      return step_lib.make_eval_step(setup).lower(setup.abstract_state.params,
                                                  memory_probe.abstract_batch(setup))
  return compile_lowered(name, _batch_what(setup), lower, hbm,
                         setup.abstract_state.replace(opt_state=None))


# ---------------------------------------------------------------- the compiler's bound


def bound(cfg: ml_collections.ConfigDict, topo: Topology) -> dict:
  """The compiler's step-time bound for `cfg`'s train step, with what it implies.

  libtpu's `cost_analysis()` counts a loop's body once, so a scanned step reports about
  one layer's FLOPs. The costs are read instead from the same step with its layers
  unrolled at depth 1 and 2 (and one loss chunk): the second layer's cost is one
  layer's, and the whole step is the first plus L-1 such layers. The bound is the
  compiler's `optimal_seconds` where it gives one; where it does not (it reports a
  negative figure for large steps), the compiler-counted FLOPs (remat's recompute
  included) at the chip's peak, which bounds the step from below all the same: `kind`
  says which. Either way a bound, not a measurement. {'valid': False, 'why': ...} where
  neither can be had, and where the step calls Mosaic kernels (splash attention): the
  cost model counts a custom call as no FLOPs, so its figures undercount such a step."""
  costs = []
  for depth in (1, 2):
    c = cfg.copy_and_resolve_references()
    c.model.num_layers, c.model.scan_unroll = depth, 0
    c.train.loss_chunk_len = c.data.seq_len
    accum = int(c.train.grad_accum_steps)
    c.train.global_batch_size //= accum    # one micro-batch; the step is accum of them
    c.train.grad_accum_steps = 1
    setup = build(c, topo)
    prog = compile_train_step(setup, topo.hbm_bytes)
    if not prog.fits or not prog.flops:
      return {"valid": False, "why": prog.oom or "cost_analysis() gave no FLOPs"}
    if prog.mosaic_calls:
      # Counted anyway, the Llama-3-8B-shaped step on v6e-256 came to 125.6% MFU.
      return {"valid": False, "why": (
          f"the step's {prog.mosaic_calls} Mosaic kernel calls (splash attention) are "
          f"outside the compiler's cost model, which counts them as no FLOPs, so a bound "
          f"from it would undercount; --config.model.attention_impl=xla bounds the "
          f"XLA-attention step instead")}
    costs.append((prog.optimal_seconds, prog.flops))
  layers = int(cfg.model.num_layers)
  (s1, f1), (s2, f2) = costs
  if f2 <= f1:
    return {"valid": False, "why": "the 2-layer step did not cost more than the 1-layer one"}
  flops = (f1 + (layers - 1) * (f2 - f1)) * accum
  peak = topo.chip.peak_tflops
  if s1 is not None and s2 is not None and s2 > s1:
    kind, step_s = "optimal_seconds", (s1 + (layers - 1) * (s2 - s1)) * accum
  else:
    kind, step_s = "flops at peak", flops / (peak * 1e12)
  tokens = cfg.train.global_batch_size * cfg.data.seq_len
  per_chip = tokens / topo.num_chips / step_s
  model_cfg = setup.model_cfg.replace(num_layers=layers)
  out = {"valid": True, "kind": kind, "step_s": step_s, "flops_per_chip": flops,
         "tokens_per_s_per_chip": per_chip,
         "mfu": metrics_lib.mfu(model_cfg.flops_per_token(cfg.data.seq_len), per_chip, 1,
                                peak),
         "mfu_causal": metrics_lib.mfu(model_cfg.flops_per_token(cfg.data.seq_len, True),
                                       per_chip, 1, peak),
         "peak_tflops": peak}
  return out


# ------------------------------------------------------------------------- --estimate


# Cheapest recompute first (growjax.model.remat.REMAT_POLICIES).
REMAT_ORDER = ("none", "dots_attention_mlp_in", "dots_attention", "dots", "full")


def fits_with(cfg: ml_collections.ConfigDict, topo: Topology, per_chip: int, remat: str
              ) -> Program:
  c = cfg.copy_and_resolve_references()
  c.train.global_batch_size = per_chip * data_parallel(c, topo) * int(c.train.grad_accum_steps)
  c.model.remat_policy = remat
  return compile_train_step(build(c, topo), topo.hbm_bytes)


def data_parallel(cfg: ml_collections.ConfigDict, topo: Topology) -> int:
  """The batch's data-parallel ways on `topo`: the mesh axes the batch rule names."""
  from growjax import sharding
  shape = sharding.mesh_shape(cfg.mesh, topo.num_chips, topo.slices)
  axes = dict(sharding.rules_from_config(cfg.sharding_rules)).get("act_batch") or ()
  return math.prod(shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def estimate(cfg: ml_collections.ConfigDict, topo: Topology, log=lambda _: None,
             max_per_chip: int = 64) -> dict:
  """The largest per-chip batch (sequences per data-parallel way and micro-batch) and,
  for it, the cheapest remat policy whose train step the compiler fits, found by
  compiling (as MaxText's estimator does): policies from the cheapest recompute up,
  each searched by doubling then bisecting, and kept only where it fits more sequences
  than every cheaper one (so a policy that cannot beat the best so far costs one
  compile)."""
  best, tried = None, 0

  def fits(per_chip, remat):
    nonlocal tried
    tried += 1
    prog = fits_with(cfg, topo, per_chip, remat)
    log(f"remat {remat}, {per_chip} per chip: "
        + (f"fits, {prog.total / GIB:.2f} GiB" if prog.fits else "does not fit"))
    return prog

  for remat in REMAT_ORDER:
    lo = best["per_chip"] if best else 0          # known to fit (with a cheaper policy)
    probe = lo + 1
    prog = fits(probe, remat)
    if not prog.fits:
      continue
    lo, hi, fitted = probe, None, prog
    while hi is None and lo < max_per_chip:       # double until it does not fit
      probe = min(lo * 2, max_per_chip)
      prog = fits(probe, remat)
      if prog.fits:
        lo, fitted = probe, prog
      else:
        hi = probe - 1
    hi = lo if hi is None else hi
    while lo < hi:                                # then bisect
      mid = (lo + hi + 1) // 2
      prog = fits(mid, remat)
      if prog.fits:
        lo, fitted = mid, prog
      else:
        hi = mid - 1
    best = {"remat_policy": remat, "per_chip": lo, "total": fitted.total}
    if lo >= max_per_chip:
      break
  if best is None:
    return {"fits": False, "compiles": tried}
  batch = best["per_chip"] * data_parallel(cfg, topo) * int(cfg.train.grad_accum_steps)
  return dict(best, fits=True, global_batch_size=batch, compiles=tried,
              overrides=[f"--config.model.remat_policy={best['remat_policy']}",
                         f"--config.train.global_batch_size={batch}"])
