"""FP8 matmuls with per-tensor scaling, current (`einsum`) or delayed (`delayed_einsum`).

The recipe is the published one (NVIDIA Transformer Engine, torchtitan's Float8
"tensorwise" scaling): in the forward both operands are cast to float8 e4m3 (more
mantissa), in the backward the output gradient to float8 e5m2 (more range). Under
current scaling each tensor's scale comes from its own amax at this step
(`scale = amax / fp8_max`, no history to carry, nothing added to the train state). Master weights stay float32 in
the optimizer, operands arrive in the compute dtype (bf16) and the output is bf16.

How XLA turns this into FP8 GEMMs. The dot itself takes the float8 operands
(`einsum(x_f8, w_f8, preferred_element_type=bf16)`: the GEMM accumulates in float32
and writes bf16) and the product of the two scales multiplies its output; XLA's GPU
compiler lowers a dot of float8 operands to a cuBLASLt FP8 GEMM. (A quantize-dequantize round trip in front of a bf16 dot, the
other published form, is not kept: with XLA's default `xla_allow_excess_precision`
the simplifier folds `convert(convert(x, f8), bf16)` away before the GEMM rewriter
sees it: measured on an H100, no float8 tensor was left in the optimized HLO.) The
backward is two more float8 dots, dx = g . w (e5m2 x e4m3) and dw = x . g
(e4m3 x e5m2), from the transposed einsum specs. On CPU (tests) the same graph runs
as float math on float8 values. The GEMM writes the compute dtype, not float32: a
float32 output doubles the bytes every projection writes and reads back for the
scaling (1.1B on an H100: benchmarks/RESULTS.md).

Gradients are straight-through: the rounding is not differentiated (`custom_vjp`), as in
every recipe. Where to use it: the projections (q, k, v, o, gate, up, down). The
attention core (QK^T, PV), the LM head and the loss stay in bf16 / float32 as in
Transformer Engine and torchtitan (whose default leaves the output layer out).

**Delayed scaling** (`config.model.fp8_scaling='delayed'`, the default; `delayed_einsum`): the
scale of an activation x (forward, e4m3) and of an output gradient g (backward, e5m2)
comes from the largest amax of the last `fp8_amax_history` steps, not from this step's
tensor, as in Transformer Engine's and MaxText's recipes. Current scaling has to reduce
a tensor to its amax before it can cast it: a full extra read of every quantized
activation and gradient, and a cast that cannot fuse into the op that produced the
tensor. With the scale known in advance, the cast fuses into the producer and the amax
this step observes (for the history) is a sibling output of the same pass (1.1B on an
H100: +4.3% tokens/s over current scaling; separate cast kernels 4 ms per step, against
43-44 ms in current scaling's profiles; benchmarks/RESULTS.md). Weights keep current scaling: they are read once per step and
their amax pass is small.

The histories are state, but not optimizer state: the model reads them as a variable
collection (`HISTORY_COLLECTION`) and `delayed_einsum` returns the amax it observed as
their *cotangent* (slot 0 of a history-shaped array, zeros elsewhere), so one
`jax.grad` gives both the parameter gradients and the observations, through remat and
the layer scan; `push_history` then shifts them in (growjax.train). Under gradient
accumulation observations combine by `max`, not by sum. Zero histories (a fresh or grown
model, a checkpoint without them) are calibrated once with current scaling: under
`calibrating()` the same function scales by this step's amax.

Why not `flax.linen.fp8_ops`. Its `Fp8DirectDotGeneralOp` also does delayed scaling
with float8 dots and carries its state through the gradient, but as values to
overwrite with. Under gradient accumulation those values would be summed over the
micro-batches; the observations here combine by max. It also keeps one history per
operand of every dot, so q, k and v would cast their shared input three times, where
here one history serves them. Its forward also saves the unquantized operands for the
backward. And it is a `dot_general` module, while the model's projections are einsums
over declared parameters. (Its `Fp8DotGeneralOp` quantizes by a round trip around a bf16
dot, the form XLA's simplifier folds away here, see above.)

This module knows nothing about the model; `growjax.model` chooses per matmul with
`config.model.matmul_precision` ('bf16' | 'fp8') and `config.model.fp8_scaling`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

E4M3 = jnp.float8_e4m3fn   # forward operands: 3 mantissa bits, max 448
E5M2 = jnp.float8_e5m2     # backward output gradient: 2 mantissa bits, max 57344
PRECISIONS = ("bf16", "fp8")
SCALINGS = ("current", "delayed")
HISTORY_COLLECTION = "fp8_history"   # the model's variable collection of amax histories


def check_precision(value: str, field: str = "config.model.matmul_precision") -> str:
  if value not in PRECISIONS:
    raise ValueError(f"{field}={value!r} is not a matmul precision — choose one of "
                     f"{', '.join(PRECISIONS)}")
  return value


# The precisions a benchmark names: 'fp8_delayed' is fp8 with fp8_scaling='delayed'.
BENCHMARK_PRECISIONS = ("bf16", "fp8", "fp8_delayed")


def set_precision(model_cfg, name: str) -> None:
  """Sets `config.model`'s matmul_precision and fp8_scaling from a benchmark's name."""
  if name not in BENCHMARK_PRECISIONS:
    raise ValueError(f"precision {name!r} — choose one of {', '.join(BENCHMARK_PRECISIONS)}")
  model_cfg.matmul_precision = "bf16" if name == "bf16" else "fp8"
  model_cfg.fp8_scaling = "delayed" if name == "fp8_delayed" else "current"


def check_scaling(value: str, history: int, where: str = "config.model") -> None:
  if value not in SCALINGS:
    raise ValueError(f"{where}.fp8_scaling={value!r} is not an FP8 scaling — choose one of "
                     f"{', '.join(SCALINGS)}")
  if not isinstance(history, int) or history < 1:
    raise ValueError(f"{where}.fp8_amax_history={history!r} must be a positive integer "
                     f"(steps of amax kept for delayed scaling; 16 is the default)")


def amax_of(x: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(x)).astype(jnp.float32)


def scale_from_amax(amax: jax.Array, q_dtype) -> jax.Array:
  """amax / max(q_dtype) as a float32 scalar (1 where amax is 0 or not finite, so
  nothing is divided by 0)."""
  fmax = float(jnp.finfo(q_dtype).max)
  return jnp.where((amax > 0) & jnp.isfinite(amax), amax / fmax, jnp.float32(1.0))


def scale_of(x: jax.Array, q_dtype) -> jax.Array:
  """The dequantization scale of `x` for `q_dtype`: amax(|x|) / max(q_dtype), a float32
  scalar (1 when `x` is all zero or not finite, so nothing is divided by 0)."""
  return scale_from_amax(amax_of(x), q_dtype)


def quantize(x: jax.Array, q_dtype, scale: jax.Array) -> jax.Array:
  fmax = float(jnp.finfo(q_dtype).max)
  return jnp.clip(x.astype(jnp.float32) / scale, -fmax, fmax).astype(q_dtype)


# The name of every FP8 scale (a float32 scalar). Remat policies that keep it
# (growjax.model's dots and dots_attention) spare the backward a second amax reduction
# over each operand the forward quantized: under `dots` the backward recomputes the norm
# and SwiGLU outputs it quantizes, and without the scale it would reduce them again.
SCALE_NAME = "fp8_scale"


def quantized(x, q_dtype, save_as=None):
  """`x` cast to `q_dtype` under its current scale, and that scale (remat keeps it)."""
  scale = checkpoint_name(jax.lax.stop_gradient(scale_of(x, q_dtype)), SCALE_NAME)
  return _named(quantize(x, q_dtype, scale), save_as), scale


def _named(xq, save_as):
  """The float8 operand, named for remat policies where the caller asks (growjax.model
  names the down projection's `mlp_in`). It is saved as its bytes (uint8): remat passes
  a saved float residual through `reduce_precision`, which for float8_e4m3fn (no inf,
  max 448) rounds as IEEE e4m3 does (max 240), so the top of the range became inf."""
  if save_as is None:
    return xq
  saved = checkpoint_name(jax.lax.bitcast_convert_type(xq, jnp.uint8), save_as)
  return jax.lax.bitcast_convert_type(saved, xq.dtype)


def _transposed_specs(spec: str) -> tuple[str, str]:
  """'X,W->Y' -> ('Y,W->X', 'X,Y->W'): the einsums of dx and dw. Valid when every index
  appears in exactly two of X, W, Y (no traces, no summed-out index), as in every
  projection of the model."""
  ins, y = spec.replace(" ", "").split("->")
  x, w = ins.split(",")
  for i in set(x + w + y):
    if (i in x) + (i in w) + (i in y) != 2:
      raise ValueError(f"fp8.einsum: {spec!r} is not a two-operand projection (index "
                       f"{i!r} must appear in exactly two of its three terms).")
  return f"{y},{w}->{x}", f"{x},{y}->{w}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _fp8_einsum(spec, x, w, dt, save_x_as):
  return _fp8_einsum_fwd(spec, x, w, dt, save_x_as)[0]


def _fp8_einsum_fwd(spec, x, w, dt, save_x_as):
  xq, sx = quantized(x, E4M3, save_x_as)
  wq, sw = quantized(w, E4M3)
  y = jnp.einsum(spec, xq, wq, preferred_element_type=dt)
  return y * (sx * sw).astype(dt), (xq, sx, wq, sw)


def _fp8_einsum_bwd(spec, dt, save_x_as, res, g):
  xq, sx, wq, sw = res
  gq, sg = quantized(g, E5M2)
  dx_spec, dw_spec = _transposed_specs(spec)
  dx = jnp.einsum(dx_spec, gq, wq, preferred_element_type=dt) * (sg * sw).astype(dt)
  dw = jnp.einsum(dw_spec, xq, gq, preferred_element_type=dt) * (sx * sg).astype(dt)
  return dx, dw


_fp8_einsum.defvjp(_fp8_einsum_fwd, _fp8_einsum_bwd)


def einsum(spec: str, x: jax.Array, w: jax.Array, *, out_dtype=None,
           precision: str = "fp8", save_x_as: str | None = None) -> jax.Array:
  """`jnp.einsum(spec, x, w)` of two operands with FP8 GEMMs (forward and backward);
  `precision='bf16'` is the plain einsum. `out_dtype` (default: the operands' common
  dtype) is the compute dtype of the operands, the output and the gradients.
  `save_x_as`: a `checkpoint_name` for the float8 cast of `x` (FP8 only)."""
  dt = jnp.dtype(out_dtype or jnp.result_type(x, w))
  if check_precision(precision) == "bf16":
    return jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=dt)
  _transposed_specs(spec)
  return _fp8_einsum(spec, x.astype(dt), w.astype(dt), dt, save_x_as)


# --- delayed scaling -----------------------------------------------------------------

_CALIBRATING = [False]


@contextlib.contextmanager
def calibrating():
  """Traces `delayed_einsum` with current scaling (this step's amax) while still
  reporting the observed amaxes: the one step that fills zero histories. Read at trace
  time, so a function traced inside it stays a calibration function."""
  _CALIBRATING.append(True)
  try:
    yield
  finally:
    _CALIBRATING.pop()


def is_calibrating() -> bool:
  return _CALIBRATING[-1]


def history_scale(history: jax.Array, q_dtype) -> jax.Array:
  """The scale of `q_dtype` from the largest amax of a history."""
  return scale_from_amax(jnp.max(history), q_dtype)


def observed(amax: jax.Array, like: jax.Array) -> jax.Array:
  """`amax` in slot 0 of a history-shaped array, zeros elsewhere: the cotangent form."""
  return jnp.zeros(like.shape, jnp.float32).at[..., 0].set(amax)


def push_history(history: Any, seen: Any) -> Any:
  """Each history (`(..., H)`, newest first) shifted by one with the observed amax (slot 0
  of `seen`, as `delayed_einsum` reports it) in front."""
  return jax.tree.map(
      lambda h, o: jnp.concatenate([o[..., :1], h[..., :-1]], axis=-1).astype(h.dtype),
      history, seen)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7, 8))
def _delayed_einsum(spec, x, w, hist_x, hist_g, dt, calibrate, observe_x, save_x_as):
  return _delayed_fwd(spec, x, w, hist_x, hist_g, dt, calibrate, observe_x, save_x_as)[0]


def delayed_quantized(x, history, calibrate: bool, save_as=None):
  """`x` cast to e4m3 under its history's scale (this step's amax when `calibrate`): the
  cast, its scale, and the amax observed for the history (remat keeps it, a scalar)."""
  amax = checkpoint_name(jax.lax.stop_gradient(amax_of(x)), SCALE_NAME)
  scale = jax.lax.stop_gradient(scale_from_amax(amax, E4M3) if calibrate
                                else history_scale(history, E4M3))
  return _named(quantize(x, E4M3, scale), save_as), scale, amax


def _delayed_fwd(spec, x, w, hist_x, hist_g, dt, calibrate, observe_x, save_x_as):
  xq, sx, amax_x = delayed_quantized(x, hist_x, calibrate, save_x_as)
  wq, sw = quantized(w, E4M3)
  y = jnp.einsum(spec, xq, wq, preferred_element_type=dt)
  return y * (sx * sw).astype(dt), (xq, sx, wq, sw, amax_x, hist_x, hist_g)


def _delayed_bwd(spec, dt, calibrate, observe_x, save_x_as, res, g):
  xq, sx, wq, sw, amax_x, hist_x, hist_g = res
  amax_g = jax.lax.stop_gradient(amax_of(g))
  sg = scale_from_amax(amax_g, E5M2) if calibrate else history_scale(hist_g, E5M2)
  gq = quantize(g, E5M2, sg)
  dx_spec, dw_spec = _transposed_specs(spec)
  dx = jnp.einsum(dx_spec, gq, wq, preferred_element_type=dt) * (sg * sw).astype(dt)
  dw = jnp.einsum(dw_spec, xq, gq, preferred_element_type=dt) * (sx * sg).astype(dt)
  seen_x = observed(amax_x, hist_x) if observe_x else jnp.zeros_like(hist_x)
  return dx, dw, seen_x, observed(amax_g, hist_g)


_delayed_einsum.defvjp(_delayed_fwd, _delayed_bwd)


def delayed_einsum(spec: str, x: jax.Array, w: jax.Array, hist_x: jax.Array,
                   hist_g: jax.Array, *, out_dtype=None, observe_x: bool = True,
                   save_x_as: str | None = None) -> jax.Array:
  """`einsum(spec, x, w)` with FP8 GEMMs whose activation and gradient scales come from
  the amax histories `hist_x` / `hist_g` (float32 `(H,)`, newest first). The gradient
  with respect to each history is the amax this step observed (`observed`), which
  `push_history` shifts in. Under `calibrating()`, scales come from this step's amax.
  Projections of one input share its history (one cast of it, as current scaling's
  common subexpression); only one of them (`observe_x`) reports it, since cotangents
  of a shared input add up. `save_x_as`: a `checkpoint_name` for the float8 cast of
  `x`."""
  dt = jnp.dtype(out_dtype or jnp.result_type(x, w))
  _transposed_specs(spec)
  return _delayed_einsum(spec, x.astype(dt), w.astype(dt), hist_x, hist_g, dt,
                         _CALIBRATING[-1], observe_x, save_x_as)
