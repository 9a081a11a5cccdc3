"""FP8 matmuls with current (per-tensor, per-step) scaling: `einsum` and `dot_general`.

The recipe is the published one (NVIDIA Transformer Engine, torchtitan's Float8
"tensorwise" scaling): in the forward both operands are cast to float8 e4m3 (more
mantissa), in the backward the output gradient to float8 e5m2 (more range); each
tensor's scale comes from its own amax at this step (`scale = amax / fp8_max`, no
history to carry, nothing added to the train state). Master weights stay float32 in
the optimizer, operands arrive in the compute dtype (bf16) and the output is bf16.

How XLA turns this into FP8 GEMMs. The dot itself takes the float8 operands
(`einsum(x_f8, w_f8, preferred_element_type=bf16)`: the GEMM accumulates in float32
and writes bf16) and the product of the two scales multiplies its output; XLA's GPU compiler lowers a dot of float8 operands to
a cuBLASLt FP8 GEMM. (A quantize-dequantize round trip in front of a bf16 dot, the
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

This module holds no state and knows nothing about the model; `growjax.model` chooses
per matmul with `config.model.matmul_precision` ('bf16' | 'fp8').
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

E4M3 = jnp.float8_e4m3fn   # forward operands: 3 mantissa bits, max 448
E5M2 = jnp.float8_e5m2     # backward output gradient: 2 mantissa bits, max 57344
PRECISIONS = ("bf16", "fp8")


def check_precision(value: str, field: str = "config.model.matmul_precision") -> str:
  if value not in PRECISIONS:
    raise ValueError(f"{field}={value!r} is not a matmul precision — choose one of "
                     f"{', '.join(PRECISIONS)}")
  return value


def scale_of(x: jax.Array, q_dtype) -> jax.Array:
  """The dequantization scale of `x` for `q_dtype`: amax(|x|) / max(q_dtype), a float32
  scalar (1 when `x` is all zero or not finite, so nothing is divided by 0)."""
  amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
  fmax = float(jnp.finfo(q_dtype).max)
  return jnp.where((amax > 0) & jnp.isfinite(amax), amax / fmax, jnp.float32(1.0))


def quantize(x: jax.Array, q_dtype, scale: jax.Array) -> jax.Array:
  fmax = float(jnp.finfo(q_dtype).max)
  return jnp.clip(x.astype(jnp.float32) / scale, -fmax, fmax).astype(q_dtype)


def dequantize(q: jax.Array, dtype, scale: jax.Array) -> jax.Array:
  """`convert(f8) * scalar`: the operand form XLA folds into an FP8 GEMM."""
  return q.astype(dtype) * scale.astype(dtype)


def qdq(x: jax.Array, q_dtype) -> jax.Array:
  """`x` rounded to `q_dtype` under its current scale, back in `x.dtype`."""
  scale = jax.lax.stop_gradient(scale_of(x, q_dtype))
  return dequantize(quantize(x, q_dtype, scale), x.dtype, scale)


# The name of every FP8 scale (a float32 scalar). Remat policies that keep it
# (growjax.model's dots and dots_attention) spare the backward a second amax reduction
# over each operand the forward quantized: under `dots` the backward recomputes the norm
# and SwiGLU outputs it quantizes, and without the scale it would reduce them again.
SCALE_NAME = "fp8_scale"


def _quantized(x, q_dtype):
  scale = checkpoint_name(jax.lax.stop_gradient(scale_of(x, q_dtype)), SCALE_NAME)
  return quantize(x, q_dtype, scale), scale


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _fp8_einsum(spec, x, w, dt):
  return _fp8_einsum_fwd(spec, x, w, dt)[0]


def _fp8_einsum_fwd(spec, x, w, dt):
  xq, sx = _quantized(x, E4M3)
  wq, sw = _quantized(w, E4M3)
  y = jnp.einsum(spec, xq, wq, preferred_element_type=dt)
  return y * (sx * sw).astype(dt), (xq, sx, wq, sw)


def _fp8_einsum_bwd(spec, dt, res, g):
  xq, sx, wq, sw = res
  gq, sg = _quantized(g, E5M2)
  dx_spec, dw_spec = _transposed_specs(spec)
  dx = jnp.einsum(dx_spec, gq, wq, preferred_element_type=dt) * (sg * sw).astype(dt)
  dw = jnp.einsum(dw_spec, xq, gq, preferred_element_type=dt) * (sx * sg).astype(dt)
  return dx, dw


_fp8_einsum.defvjp(_fp8_einsum_fwd, _fp8_einsum_bwd)


def einsum(spec: str, x: jax.Array, w: jax.Array, *, out_dtype=None,
           precision: str = "fp8") -> jax.Array:
  """`jnp.einsum(spec, x, w)` of two operands with FP8 GEMMs (forward and backward);
  `precision='bf16'` is the plain einsum. `out_dtype` (default: the operands' common
  dtype) is the compute dtype of the operands, the output and the gradients."""
  dt = jnp.dtype(out_dtype or jnp.result_type(x, w))
  if check_precision(precision) == "bf16":
    return jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=dt)
  _transposed_specs(spec)
  return _fp8_einsum(spec, x.astype(dt), w.astype(dt), dt)
