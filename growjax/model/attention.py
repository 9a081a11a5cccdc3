"""Causal attention on each backend, and the rotary positions it reads.

Packed documents are kept apart per backend: XLA's boolean mask, cuDNN's mask or its
packed layout (`cudnn_packing='ragged'`: per-document lengths and offsets), the splash
kernel's segment ids on TPU (`growjax.model.splash`); rotary positions restart per
document. Apart from the blocks, so a backend is chosen, and swapped in a benchmark, in one
place: `causal_attention` looks `masked_attention` up here at call time.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from growjax.model.params import ACT_BATCH, ACT_HEADS, ACT_KV_HEADS, ACT_LENGTH

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")  # auto: cudnn on GPU, splash on TPU


ROPE_SCALINGS = ("none", "linear", "llama3")


def rotary_tables(positions_BxT: jax.Array, head_dim: int, theta: float,
                  scaling: tuple = ()):
  """`(sin, cos)`, each float32 (B, T, 1, head_dim/2): made once per forward pass and
  shared by every layer. `positions` restart at 0 at each packed document. `scaling`:
  `ModelConfig.rope_spec()`, () for none."""
  freq_F = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  if scaling:
    freq_F = scaled_frequencies(freq_F, *scaling)
  angle_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * freq_F
  return jnp.sin(angle_BxTxF)[:, :, None, :], jnp.cos(angle_BxTxF)[:, :, None, :]


def scaled_frequencies(freq_F, kind: str, factor: float, low: float = 1.0,
                       high: float = 4.0, original: int = 8192):
  """Rotary frequencies under `kind` scaling, as transformers' rope init defines them:
  'linear' divides every frequency by `factor` (positions / factor); 'llama3' (Llama
  3.1+) divides the low frequencies (wavelength above original / low) by `factor`, keeps
  the high ones (below original / high) and interpolates smoothly between."""
  if kind == "linear":
    return freq_F / factor
  if kind != "llama3":
    raise ValueError(f"rope scaling {kind!r} — choose one of {ROPE_SCALINGS}")
  wavelen_F = 2 * math.pi / freq_F
  scaled_F = jnp.where(wavelen_F > original / low, freq_F / factor, freq_F)
  smooth_F = (original / wavelen_F - low) / (high - low)
  smoothed_F = (1 - smooth_F) * scaled_F / factor + smooth_F * scaled_F
  medium_F = (wavelen_F >= original / high) & (wavelen_F <= original / low)
  return jnp.where(medium_F, smoothed_F, scaled_F)


def rope(x_BxTxNxH: jax.Array, rotary) -> jax.Array:
  """Rotary position embedding (half-split layout), computed in float32."""
  sin, cos = rotary
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def document_segments(segment_ids_BxT: jax.Array, max_segments: int) -> jax.Array:
  """Segment ids as cuDNN's packed layout takes them: 0 (padding) kept, documents past
  `max_segments` folded into the last one (its static-size list of documents)."""
  return jnp.where(segment_ids_BxT > 0, jnp.minimum(segment_ids_BxT, max_segments), 0)


def cudnn_ragged(segment_ids_BxT: jax.Array, max_segments: int):
  """cuDNN's packed layout: per row, each document's length and start offset, padded
  with -1 (its `q_seqlen` (B, M) and `q_offsets` (B, M+1)). Segment ids must be
  contiguous and ascending along a row, as packing makes them."""
  ids_M = jnp.arange(1, max_segments + 1, dtype=jnp.int32)
  lengths_BxM = jnp.sum(segment_ids_BxT[:, None, :] == ids_M[None, :, None], axis=-1,
                        dtype=jnp.int32)
  starts_BxM = jnp.cumsum(lengths_BxM, axis=-1) - lengths_BxM
  present = lengths_BxM > 0
  lengths_BxM = jnp.where(present, lengths_BxM, -1)
  starts_BxM = jnp.where(present, starts_BxM, -1)
  offsets = jnp.concatenate([starts_BxM, jnp.full_like(starts_BxM[:, :1], -1)], axis=-1)
  return lengths_BxM, offsets


def _window(cfg) -> int:
  return int(getattr(cfg, "sliding_window", 0) or 0)


def masked_attention(q, k, v, segment_ids_BxT, impl: str | None, cfg):
  """Causal attention that does not cross documents (`segment_ids`, 0 = padding), nor
  reach back more than `cfg.sliding_window` positions when it is set."""
  window = _window(cfg)
  if impl == "cudnn" and cfg.cudnn_packing == "ragged" and not window:
    max_segments = cfg.max_segments
    segment_ids_BxT = document_segments(segment_ids_BxT, max_segments)
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
    lengths, offsets = cudnn_ragged(segment_ids_BxT, max_segments)
    # cuDNN leaves padding tokens (segment 0) out of every document: their outputs and
    # their q/k/v gradients are not written. `where` gives them zeros both ways.
    real = (segment_ids_BxT > 0)[:, :, None, None]
    q, k, v = (jnp.where(real, x, jnp.zeros((), x.dtype)) for x in (q, k, v))
    out = cudnn_attention.dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
        kv_offsets=offsets, scale=q.shape[-1] ** -0.5,
        mask_type=cudnn_attention.MaskType.PADDING_CAUSAL, qkv_layout="BTNH")
    return jnp.where(real, out, jnp.zeros((), out.dtype))
  same_Bx1xTxS = (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=same_Bx1xTxS, is_causal=True,
                                      implementation="cudnn" if impl == "cudnn" else "xla",
                                      local_window_size=(window - 1, 0) if window else None)


def platform() -> str:
  """The platform the program being traced is for: that of the mesh in context (so an
  ahead-of-time compile for a TPU topology on a CPU host takes the pod's path), else
  JAX's default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def backend(cfg) -> str | None:
  """The backend `cfg.attention_impl` names; 'auto': cuDNN on a GPU in 16 bits, splash on
  a TPU, else XLA (the platform of the mesh in context, `platform`)."""
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  where = platform()
  if where == "gpu" and cfg.compute_dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if where == "tpu":
    return "xla" if _window(cfg) else "splash"   # splash here has no window
  return "xla"


def causal_attention(q, k, v, segment_ids_BxT, impl: str | None, cfg):
  """`(B, T, N, H)` attention on backend `impl` (`backend`), within each document where
  `segment_ids` are given (1, 2, ... per document, 0 = padding)."""
  if impl == "splash":  # Pallas TPU kernel (interpreted elsewhere, for tests)
    from growjax.model import splash
    return splash.causal_attention(
        q, k, v, q_axes=(ACT_BATCH, ACT_LENGTH, ACT_HEADS, None),
        kv_axes=(ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None),
        segment_ids_BxT=segment_ids_BxT, interpret=platform() != "tpu")
  if segment_ids_BxT is not None:
    return masked_attention(q, k, v, segment_ids_BxT, impl, cfg)
  window = _window(cfg)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl,
                                      local_window_size=(window - 1, 0) if window else None)
