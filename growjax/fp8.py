"""FP8 matmuls with current (per-tensor, per-step) scaling: `einsum` and `dot_general`.

The recipe is the published one (NVIDIA Transformer Engine, torchtitan's Float8
"tensorwise" scaling): in the forward both operands are cast to float8 e4m3 (more
mantissa), in the backward the output gradient to float8 e5m2 (more range); each
tensor's scale comes from its own amax at this step (`scale = amax / fp8_max`, no
history to carry, nothing added to the train state). Master weights stay float32 in
the optimizer, operands arrive in the compute dtype (bf16) and the output is bf16.

How XLA turns this into FP8 GEMMs. Each operand is quantized and immediately
dequantized (`q = clip(x / s).astype(f8)`, `dq = q.astype(bf16) * s`, `s` a float32
scalar); the dot then reads `convert(f8) -> multiply(scalar)`, which XLA's GPU GEMM
rewriter folds into one cuBLASLt FP8 matmul with the scales as its a/b scale
arguments (the pattern of flax.linen.fp8_ops `in_qdq` / `out_qdq` that MaxText's fp8
configs use). The backward dots see the saved e4m3 operands and the e5m2 gradient in
the same form, so dx = g . w and dw = x . g are FP8 GEMMs too (e5m2 x e4m3). On CPU
(tests) the same graph runs as float32 math on float8-rounded values.

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _operand(x, q_dtype):
  return qdq(x, q_dtype)


def _operand_fwd(x, q_dtype):
  return qdq(x, q_dtype), None


def _operand_bwd(q_dtype, _, g):
  return (g,)   # straight through


_operand.defvjp(_operand_fwd, _operand_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _output(y, q_dtype):
  return y


def _output_fwd(y, q_dtype):
  return y, None


def _output_bwd(q_dtype, _, g):
  return (qdq(g, q_dtype),)   # the output gradient enters both backward GEMMs as fp8


_output.defvjp(_output_fwd, _output_bwd)


def einsum(spec: str, x: jax.Array, w: jax.Array, *, out_dtype=None,
           precision: str = "fp8") -> jax.Array:
  """`jnp.einsum(spec, x, w)` of two operands with FP8 GEMMs (forward and backward);
  `precision='bf16'` is the plain einsum. `out_dtype` (default: the operands' common
  dtype) is the compute dtype of the operands and the output."""
  dt = jnp.dtype(out_dtype or jnp.result_type(x, w))
  if check_precision(precision) == "bf16":
    return jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=dt)
  y = jnp.einsum(spec, _operand(x.astype(dt), E4M3), _operand(w.astype(dt), E4M3),
                 preferred_element_type=dt)
  return _output(y, E5M2)


def dot_general(x: jax.Array, w: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """`jax.lax.dot_general` with FP8 GEMMs, signature-compatible so it can be passed as
  a flax module's `dot_general` (its `precision` argument is ignored)."""
  dt = jnp.dtype(preferred_element_type or jnp.result_type(x, w))
  y = jax.lax.dot_general(_operand(x.astype(dt), E4M3), _operand(w.astype(dt), E4M3),
                          dimension_numbers, preferred_element_type=dt)
  return _output(y, E5M2)
