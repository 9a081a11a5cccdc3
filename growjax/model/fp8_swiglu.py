"""SwiGLU's input projections under delayed FP8 scaling, with a backward of one pass.

Why it exists. With the gate and up projections as two `fp8.delayed_einsum` calls,
autodiff leaves XLA three memory-bound passes over the `(tokens, mlp_dim)` gradients in
each layer's backward: one computes d_gate in bf16 (its silu' has an exp and a divide,
which XLA will not fuse into a reduction), one casts it to float8 and takes its amax, one
does the same for d_up (1.1B, batch 24 on an H100: 33 ms of a 527 ms step,
benchmarks/RESULTS.md). Here the two projections and the product are one `custom_vjp`
whose backward computes d_gate and d_up from dh and the saved GEMM outputs, casts both
to float8 e5m2 with their history scales and reduces their amaxes, reading each input
once: on a GPU a Pallas (Triton) kernel, one program per row of tokens; elsewhere the
same math in jnp. The GEMMs, scales, histories and what is reported to them are those
of `fp8.delayed_einsum` (the input shares `gate_up_x`, the gradients keep `gate_g` and
`up_g`), so checkpoints move freely between this path and the two projections.

`growjax.model` takes it where `config.model.fp8_swiglu_kernel` says: 'auto' is the
Pallas kernel on a single GPU, where it was measured, and the two projections elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from growjax.model import fp8

KERNELS = ("auto", "pallas", "off")
_BLOCK = 1024   # columns per step of a row program


def check_kernel(value: str, where: str = "config.model") -> None:
  if value not in KERNELS:
    raise ValueError(f"{where}.fp8_swiglu_kernel={value!r}; choose one of "
                     f"{', '.join(KERNELS)}")


def uses_pallas(setting: str) -> bool:
  """`fp8_swiglu_kernel` resolved at trace time: 'auto' is the kernel where the step runs
  on one GPU (a Pallas call is not split by the SPMD partitioner)."""
  if setting != "auto":
    return setting == "pallas"
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() == "gpu" and (mesh.empty or mesh.size == 1)


def swiglu_grads(dh, gate, up):
  """d_gate, d_up of silu(gate) * up, float32, from float32 dh, gate, up."""
  sig = 1.0 / (1.0 + jnp.exp(-gate))
  return dh * up * sig * (1.0 + gate * (1.0 - sig)), dh * gate * sig


def _grads_of_raw(dh, gate_raw, up_raw, s_gate, s_up):
  """`swiglu_grads` where gate and up are GEMM outputs times their scales."""
  f32 = lambda a: a.astype(jnp.float32)
  return swiglu_grads(f32(dh), f32(gate_raw) * s_gate, f32(up_raw) * s_up)


def _grads_jnp(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du):
  d_gate, d_up = _grads_of_raw(dh, gate_raw, up_raw, s_gate, s_up)
  return (fp8.quantize(d_gate, fp8.E5M2, s_dg), fp8.quantize(d_up, fp8.E5M2, s_du), jnp.max(jnp.abs(d_gate)),
          jnp.max(jnp.abs(d_up)))


def _row_kernel(s_gate_ref, s_up_ref, s_dg_ref, s_du_ref, dh_ref, gate_ref, up_ref,
                dg_ref, du_ref, amax_dg_ref, amax_du_ref):
  """One row of tokens: d_gate and d_up cast to e5m2, and the row's amax of each."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  n = dh_ref.shape[0]
  s_gate, s_up, s_dg, s_du = s_gate_ref[...], s_up_ref[...], s_dg_ref[...], s_du_ref[...]

  def body(i, carry):
    max_dg, max_du = carry
    idx = i * _BLOCK + jnp.arange(_BLOCK)
    mask = idx < n
    load = lambda ref: plgpu.load(ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
    d_gate, d_up = swiglu_grads(load(dh_ref), load(gate_ref) * s_gate, load(up_ref) * s_up)
    plgpu.store(dg_ref.at[idx], fp8.quantize(d_gate, fp8.E5M2, s_dg), mask=mask)
    plgpu.store(du_ref.at[idx], fp8.quantize(d_up, fp8.E5M2, s_du), mask=mask)
    return jnp.maximum(max_dg, jnp.abs(d_gate)), jnp.maximum(max_du, jnp.abs(d_up))

  zeros = jnp.zeros((_BLOCK,), jnp.float32)
  max_dg, max_du = jax.lax.fori_loop(0, pl.cdiv(n, _BLOCK), body, (zeros, zeros))
  amax_dg_ref[...] = jnp.max(max_dg)
  amax_du_ref[...] = jnp.max(max_du)


def _grads_pallas(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du, interpret=False):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
  shape = dh.shape
  rows = lambda a: a.reshape(-1, shape[-1])
  row = jax.ShapeDtypeStruct((shape[-1],), fp8.E5M2)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  call = pl.pallas_call(_row_kernel, out_shape=(row, row, scalar, scalar), grid=(),
                        compiler_params=plgpu.CompilerParams(num_warps=4),
                        interpret=interpret, name="fp8_swiglu_grads")
  call = jax.vmap(call, in_axes=(None, None, None, None, 0, 0, 0))
  f32 = lambda s: jnp.asarray(s, jnp.float32)
  dg, du, amax_dg, amax_du = call(f32(s_gate), f32(s_up), f32(s_dg), f32(s_du), rows(dh),
                                  rows(gate_raw), rows(up_raw))
  return dg.reshape(shape), du.reshape(shape), jnp.max(amax_dg), jnp.max(amax_du)


def grads_cast(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du, pallas: bool,
               interpret: bool = False):
  """(d_gate / s_dg, d_up / s_du) as e5m2, and amax(|d_gate|), amax(|d_up|) (float32),
  where gate = gate_raw * s_gate, up = up_raw * s_up (the GEMM outputs and their scales).
  `pallas`: the one-pass kernel (`interpret` runs it without a GPU, for tests)."""
  if pallas:
    return _grads_pallas(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du, interpret)
  return _grads_jnp(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _swiglu_in(x, w_gate, w_up, hist_x, hist_gate, hist_up, dt, calibrate, pallas,
               interpret):
  return _fwd(x, w_gate, w_up, hist_x, hist_gate, hist_up, dt, calibrate, pallas,
              interpret)[0]


def _fwd(x, w_gate, w_up, hist_x, hist_gate, hist_up, dt, calibrate, pallas, interpret):
  xq, sx, amax_x = fp8.delayed_quantized(x, hist_x, calibrate)
  wgq, swg = fp8.quantized(w_gate, fp8.E4M3)
  wuq, swu = fp8.quantized(w_up, fp8.E4M3)
  # The GEMM outputs, unscaled: the backward reads exactly these (a scaled copy would be
  # one more pass over each).
  gate_raw = jnp.einsum("bte,em->btm", xq, wgq, preferred_element_type=dt)
  up_raw = jnp.einsum("bte,em->btm", xq, wuq, preferred_element_type=dt)
  gate, up = gate_raw * (sx * swg).astype(dt), up_raw * (sx * swu).astype(dt)
  h = jax.nn.silu(gate) * up
  return h, (xq, sx, wgq, swg, wuq, swu, gate_raw, up_raw, amax_x, hist_x, hist_gate,
             hist_up)


def _bwd(dt, calibrate, pallas, interpret, res, dh):
  xq, sx, wgq, swg, wuq, swu, gate_raw, up_raw, amax_x, hist_x, hist_gate, hist_up = res
  s_gate, s_up = sx * swg, sx * swu
  if calibrate:   # this step's amax: the gradients first, then their cast
    d_gate, d_up = _grads_of_raw(dh, gate_raw, up_raw, s_gate, s_up)
    amax_dg, amax_du = fp8.amax_of(d_gate), fp8.amax_of(d_up)
    s_dg, s_du = (fp8.scale_from_amax(a, fp8.E5M2) for a in (amax_dg, amax_du))
    dgq, duq = fp8.quantize(d_gate, fp8.E5M2, s_dg), fp8.quantize(d_up, fp8.E5M2, s_du)
  else:
    s_dg, s_du = fp8.history_scale(hist_gate, fp8.E5M2), fp8.history_scale(hist_up, fp8.E5M2)
    dgq, duq, amax_dg, amax_du = grads_cast(dh, gate_raw, up_raw, s_gate, s_up, s_dg, s_du,
                                            pallas, interpret)
  dx = (jnp.einsum("btm,em->bte", dgq, wgq, preferred_element_type=dt) * (s_dg * swg).astype(dt)
        + jnp.einsum("btm,em->bte", duq, wuq, preferred_element_type=dt)
        * (s_du * swu).astype(dt))
  dwg = jnp.einsum("bte,btm->em", xq, dgq, preferred_element_type=dt) * (sx * s_dg).astype(dt)
  dwu = jnp.einsum("bte,btm->em", xq, duq, preferred_element_type=dt) * (sx * s_du).astype(dt)
  return (dx, dwg, dwu, fp8.observed(amax_x, hist_x), fp8.observed(amax_dg, hist_gate),
          fp8.observed(amax_du, hist_up))


_swiglu_in.defvjp(_fwd, _bwd)


def swiglu_in(x, w_gate, w_up, hist_x, hist_gate, hist_up, *, out_dtype, pallas: bool,
              interpret: bool = False):
  """silu(x @ w_gate) * (x @ w_up) with delayed-scaling FP8 GEMMs (`x`: (B, T, E), the
  weights (E, M)), as `fp8.delayed_einsum` would compute the two projections; its
  backward casts both gradients in one pass (`pallas`) and reports the amaxes of the
  input and of both gradients to their histories."""
  dt = jnp.dtype(out_dtype)
  return _swiglu_in(x.astype(dt), w_gate.astype(dt), w_up.astype(dt), hist_x, hist_gate,
                    hist_up, dt, fp8.is_calibrating(), pallas, interpret)
