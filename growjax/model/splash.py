"""Causal attention through the Pallas TPU splash-attention kernel.

`jax.nn.dot_product_attention` has no flash path on TPU, so on that backend the
model calls `causal_attention` here instead. A Pallas kernel cannot be
partitioned by XLA, so under a mesh it runs inside `shard_map`, each device on its
own batch rows and heads (the activation sharding the model's logical rules give;
a sharded sequence axis is refused, splash needs whole sequences). Grouped-query
attention is native: each device's query heads map onto its own KV heads.
Packed documents pass `segment_ids_BxT`: the kernel's own `SegmentIds` keep
attention inside each document. `interpret=True` runs the same kernel through the
Pallas interpreter, which is how CPU tests check it against the XLA path.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

BLOCK = 512  # query / key block; clipped to the sequence length


def _make_kernel(num_heads: int, seq_len: int, interpret: bool):
  block = min(BLOCK, seq_len)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


@functools.lru_cache(maxsize=32)
def _kernel(num_heads: int, seq_len: int, interpret: bool):
  # The kernel is cached across traces (flax's scan traces its body more than once):
  # its mask tables must be concrete arrays, not values of whichever trace made them.
  with jax.ensure_compile_time_eval():
    return _make_kernel(num_heads, seq_len, interpret)


def _compile_only() -> bool:
  """Whether the mesh in context is of chips this host does not have: a TPU topology
  compiled for ahead of time on a CPU host (`growjax compile`). Under `jax.set_mesh` of
  such devices nothing can run eagerly, so the mask tables are staged into the program."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device is not None and device.device_kind not in {d.device_kind for d in jax.devices()}


def _kernel_in_trace(num_heads: int, seq_len: int, interpret: bool, cached: bool):
  if _compile_only():
    return _make_kernel(num_heads, seq_len, interpret)
  return (_kernel if cached else _kernel.__wrapped__)(num_heads, seq_len, interpret)


def _local(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, interpret: bool):
  _, t, n, h = q_BxTxNxH.shape
  if t % 128:
    raise ValueError(f"splash attention needs config.data.seq_len divisible by 128, got {t}; "
                     "set config.model.attention_impl='xla'.")
  q = (q_BxTxNxH * (h ** -0.5)).swapaxes(1, 2)   # the kernel does not scale
  k, v = k_BxTxKxH.swapaxes(1, 2), v_BxTxKxH.swapaxes(1, 2)
  if segment_ids_BxT is None:
    kernel = _kernel_in_trace(n, t, interpret, cached=True)
    out_BxNxTxH = jax.vmap(kernel)(q, k, v)
  else:
    # Made afresh in each trace: a cached kernel called with segment ids inside flax's
    # scan keeps a value of the trace that first called it.
    kernel = _kernel_in_trace(n, t, interpret, cached=False)
    out_BxNxTxH = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)))(
        q, k, v, segment_ids_BxT)
  return out_BxNxTxH.swapaxes(1, 2)


def _current_mesh():
  """The mesh in context (`sharding.activation_sharding` / `jax.set_mesh`), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, *, q_axes, kv_axes,
                     segment_ids_BxT=None, interpret: bool = False):
  """Causal softmax attention, `(batch, seq, heads, head_dim)` in and out; with
  `segment_ids_BxT`, also within each document only.

  `q_axes` / `kv_axes` are the logical axis names of q and k/v; under a mesh they
  become the `shard_map` specs."""
  mesh = _current_mesh()
  if mesh is None or mesh.size == 1:
    return _local(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, interpret)
  q_spec, kv_spec = nn.logical_to_mesh_axes(q_axes), nn.logical_to_mesh_axes(kv_axes)
  if q_spec[1] is not None or kv_spec[1] is not None:
    raise ValueError("splash attention needs the sequence axis unsharded; remove the "
                     "'act_length' entry of config.sharding_rules or set "
                     "config.model.attention_impl='xla'.")
  q_spec, kv_spec = P(*q_spec), P(*kv_spec)
  if segment_ids_BxT is None:
    fn = functools.partial(_local, segment_ids_BxT=None, interpret=interpret)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec),
                         out_specs=q_spec, check_vma=False)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  fn = functools.partial(_local, interpret=interpret)
  seg_spec = P(q_spec[0], None)  # the batch rows of q, whole sequences
  return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(
                           q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
