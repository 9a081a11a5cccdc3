"""Next-token cross-entropy that never holds the full float32 logits.

The LM head is applied chunk by chunk along the sequence inside a `lax.scan`
whose body is rematerialised, so the backward pass recomputes each chunk's
logits instead of keeping `(batch, seq, vocab)` float32 values alive. The batch
axis stays whole in every chunk, so its data-parallel sharding is untouched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _logits(h_BxLxE, head_ExV, dtype):
  """`h @ head` from `dtype` operands into float32 logits (an exact softmax input).

  Plain autodiff would run the backward matmuls on the float32 cotangent (slow
  TF32/FP32 GEMMs, the largest non-bf16 kernels of a step); here the cotangent is
  cast to `dtype` first, as every other backward matmul of the model already is.
  """
  return jnp.einsum("ble,ev->blv", h_BxLxE.astype(dtype), head_ExV.astype(dtype),
                    preferred_element_type=jnp.float32)


def _logits_fwd(h_BxLxE, head_ExV, dtype):
  return _logits(h_BxLxE, head_ExV, dtype), (h_BxLxE, head_ExV)


def _logits_bwd(dtype, res, g_BxLxV):
  h_BxLxE, head_ExV = res
  g = g_BxLxV.astype(dtype)
  dh = jnp.einsum("blv,ev->ble", g, head_ExV.astype(dtype), preferred_element_type=jnp.float32)
  dhead = jnp.einsum("ble,blv->ev", h_BxLxE.astype(dtype), g,
                     preferred_element_type=jnp.float32)
  return dh.astype(h_BxLxE.dtype), dhead.astype(head_ExV.dtype)


_logits.defvjp(_logits_fwd, _logits_bwd)


def cross_entropy(hidden_BxTxE: jax.Array, head_ExV: jax.Array, targets_BxT: jax.Array, *,
                  z_loss: float = 0.0, chunk_len: int = 512, dtype=jnp.bfloat16,
                  mask_BxT: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token loss (+ z-loss) and its parts over the targets `mask_BxT` counts
  (all when None; padding is 0); logits computed in `dtype`, accumulated and
  normalised in float32."""
  b, t, e = hidden_BxTxE.shape
  chunk = min(chunk_len, t)
  if t % chunk:
    raise ValueError(f"config.train.loss_chunk_len={chunk_len} must divide the sequence "
                     f"length {t}.")
  n_chunks = t // chunk
  h_CxBxLxE = hidden_BxTxE.reshape(b, n_chunks, chunk, e).swapaxes(0, 1)
  y_CxBxL = targets_BxT.reshape(b, n_chunks, chunk).swapaxes(0, 1)
  if mask_BxT is None:
    w_CxBxL, count = None, b * t
  else:
    w_BxT = mask_BxT.astype(jnp.float32)
    w_CxBxL = w_BxT.reshape(b, n_chunks, chunk).swapaxes(0, 1)
    count = jnp.maximum(jnp.sum(w_BxT), 1.0)
  head = head_ExV.astype(dtype)

  @jax.checkpoint
  def chunk_sums(h_BxLxE, y_BxL, w_BxL):
    logits = _logits(h_BxLxE, head, jnp.dtype(dtype))
    lse_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y_BxL[..., None], axis=-1)[..., 0]
    nll_BxL, z_BxL = lse_BxL - target_logit, jnp.square(lse_BxL)
    if w_BxL is not None:  # `where`, not a product: padding rows may hold anything
      nll_BxL, z_BxL = jnp.where(w_BxL > 0, nll_BxL, 0.0), jnp.where(w_BxL > 0, z_BxL, 0.0)
    return jnp.sum(nll_BxL), jnp.sum(z_BxL)

  def body(carry, xs):
    nll, z = chunk_sums(*xs)
    return (carry[0] + nll, carry[1] + z), None

  zero = jnp.zeros((), jnp.float32)
  (nll_sum, z_sum), _ = jax.lax.scan(body, (zero, zero), (h_CxBxLxE, y_CxBxL, w_CxBxL))
  nll = nll_sum / count
  zl = z_loss * z_sum / count
  return nll + zl, {"loss": nll, "z_loss": zl}
