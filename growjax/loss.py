"""Next-token cross-entropy that never holds the full float32 logits.

The LM head is applied chunk by chunk along the sequence inside a `lax.scan`
whose body is rematerialised, so the backward pass recomputes each chunk's
logits instead of keeping `(batch, seq, vocab)` float32 values alive. The batch
axis stays whole in every chunk, so its data-parallel sharding is untouched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(hidden_BxTxE: jax.Array, head_ExV: jax.Array, targets_BxT: jax.Array, *,
                  z_loss: float = 0.0, chunk_len: int = 512,
                  dtype=jnp.bfloat16) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token loss (+ z-loss) and its parts; logits computed in `dtype`,
  accumulated and normalised in float32."""
  b, t, e = hidden_BxTxE.shape
  chunk = min(chunk_len, t)
  if t % chunk:
    raise ValueError(f"config.train.loss_chunk_len={chunk_len} must divide the sequence "
                     f"length {t}.")
  n_chunks = t // chunk
  h_CxBxLxE = hidden_BxTxE.reshape(b, n_chunks, chunk, e).swapaxes(0, 1)
  y_CxBxL = targets_BxT.reshape(b, n_chunks, chunk).swapaxes(0, 1)
  head = head_ExV.astype(dtype)

  @jax.checkpoint
  def chunk_sums(h_BxLxE, y_BxL):
    logits = jnp.einsum("ble,ev->blv", h_BxLxE.astype(dtype), head,
                        preferred_element_type=jnp.float32)
    lse_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y_BxL[..., None], axis=-1)[..., 0]
    return jnp.sum(lse_BxL - target_logit), jnp.sum(jnp.square(lse_BxL))

  def body(carry, xs):
    nll, z = chunk_sums(*xs)
    return (carry[0] + nll, carry[1] + z), None

  zero = jnp.zeros((), jnp.float32)
  (nll_sum, z_sum), _ = jax.lax.scan(body, (zero, zero), (h_CxBxLxE, y_CxBxL))
  count = b * t
  nll = nll_sum / count
  zl = z_loss * z_sum / count
  return nll + zl, {"loss": nll, "z_loss": zl}
