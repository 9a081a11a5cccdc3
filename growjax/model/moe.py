"""A mixture-of-experts block in place of a layer's MLP: a router, top-k routing, experts
computed as grouped matmuls over tokens sorted by expert (`jax.lax.ragged_dot`), an
optional shared expert, and the router's load-balancing and z statistics.

Routing (`route`) and the statistics run on the whole batch under the mesh's automatic
sharding; the dispatch (`dispatch`: sort, grouped SwiGLU, combine) runs per device under
`shard_map`, each device on its own tokens: with the experts split over an `expert` mesh
axis (the `experts` logical axis' rule), the routed rows travel to the device holding
their expert and back by two all-to-alls; the experts' `embed` axis (fsdp) is gathered
before use and their hidden axis (tensor) summed after. Outside a mesh (decoding, unit
tests) the same function runs on one device.

Dropless (`capacity_factor` 0): every routed row is computed. With a capacity factor each
expert takes at most `capacity` rows of a device's tokens, first come (token order) first
served; the rest are dropped (their share of the output is zero) and counted, and the
buffers are static: `capacity` rows per expert, each expert one dense batched SwiGLU.
Dropless rows sent between devices use buffers of the worst case (all of a device's rows
to one device), so the result never depends on the placement: expert-parallel equals one
device (tested); with a capacity, each device drops among its own tokens, so
expert-parallel equals each device's tokens dispatched alone (tested).

What this module does not do: the losses (`growjax.train.step` adds the statistics' losses
with config.train.moe_balance_loss / moe_router_z_loss), FP8 projections, interleaved
dense and MoE layers (every layer is MoE).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from growjax.model.config import ModelConfig
from growjax.model.create import make_param
from growjax.model.params import (ACT_BATCH, ACT_EMBED, ACT_LENGTH, EMBED, EXPERT_MLP,
                                  EXPERTS)

STATS_COLLECTION = "moe"   # the per-layer statistics each MoE block sows (scan-stacked)


def route(logits_NxX: jax.Array, k: int, router: str) -> tuple[jax.Array, jax.Array]:
  """(weights (N, k) float32, experts (N, k) int32) of each token. 'topk_softmax': a
  softmax over the k largest logits (weights sum to 1); 'softmax_topk': the k largest
  probabilities of a softmax over all experts (they sum to less). Ties go to the lower
  expert index (`lax.top_k`)."""
  logits = logits_NxX.astype(jnp.float32)
  if router == "softmax_topk":
    weights, experts = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
  else:
    top, experts = jax.lax.top_k(logits, k)
    weights = jax.nn.softmax(top, axis=-1)
  return weights, experts.astype(jnp.int32)


def router_stats(logits_NxX: jax.Array, experts_Nxk: jax.Array) -> dict[str, jax.Array]:
  """The router's losses over these tokens: `balance`, Switch's load-balancing loss X *
  sum_x f_x P_x (f_x: the fraction of routed rows that chose expert x, P_x: its mean
  probability; 1 when uniform), and `z`, the mean squared log-partition (ST-MoE)."""
  logits = logits_NxX.astype(jnp.float32)
  x = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1)
  frac_X = jnp.zeros((x,), jnp.float32).at[experts_Nxk.reshape(-1)].add(1.0) / experts_Nxk.size
  balance = x * jnp.sum(frac_X * jnp.mean(probs, axis=0))
  z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
  return {"balance": balance, "z": z}


def capacity(cfg: ModelConfig, tokens: int) -> int:
  """Rows each expert takes of `tokens` (one device's); 0: dropless."""
  if not cfg.capacity_factor:
    return 0
  return math.ceil(cfg.capacity_factor * tokens * cfg.experts_per_token / cfg.num_experts)


def _swiglu_grouped(rows_AxE, sizes_X, gate_ExXxM, up_ExXxM, down_XxMxE, dt):
  """Each expert's SwiGLU on its contiguous group of rows (rows past the groups: 0)."""
  def grouped(lhs, rhs):
    return jax.lax.ragged_dot(lhs, rhs.astype(dt), sizes_X,
                              preferred_element_type=jnp.float32).astype(dt)
  g = grouped(rows_AxE, jnp.swapaxes(gate_ExXxM, 0, 1))
  u = grouped(rows_AxE, jnp.swapaxes(up_ExXxM, 0, 1))
  return jax.lax.ragged_dot(nn.silu(g) * u, down_XxMxE.astype(dt), sizes_X,
                            preferred_element_type=jnp.float32)


def dispatch(x_NxE, weights_Nxk, experts_Nxk, gate_ExXxM, up_ExXxM, down_XxMxE, *,
             num_experts: int, cap: int, dt, ep_axis=None, ep: int = 1):
  """The routed experts' output (N, E) float32 for N tokens, and how many routed rows
  were dropped (int32). The weights hold `num_experts / ep` experts, this device's
  (`ep_axis`: the mesh axes they are split over, under `shard_map`; None: all here)."""
  if cap:
    return _dispatch_capacity(x_NxE, weights_Nxk, experts_Nxk, gate_ExXxM, up_ExXxM,
                              down_XxMxE, num_experts=num_experts, cap=cap, dt=dt,
                              ep_axis=ep_axis, ep=ep)
  n, k = experts_Nxk.shape
  a = n * k
  local = num_experts // ep
  flat_A = experts_Nxk.reshape(-1)
  order_A = jnp.argsort(flat_A, stable=True)          # rows grouped by expert, token order
  expert_A = flat_A[order_A]
  sizes_X = jnp.bincount(flat_A, length=num_experts)
  rows_AxE = x_NxE.astype(dt)[order_A // k]
  # Send buffers: to device d the rows of its experts, padded to A (the worst case).
  dest_A = expert_A // local
  dsizes_D = sizes_X.reshape(ep, local).sum(axis=1)
  dstarts_D = jnp.cumsum(dsizes_D) - dsizes_D
  slot_DxA = dstarts_D[:, None] + jnp.arange(a)[None, :]
  valid_DxA = jnp.arange(a)[None, :] < dsizes_D[:, None]
  slot_DxA = jnp.minimum(slot_DxA, a - 1)
  send_DxAxE = jnp.where(valid_DxA[..., None], rows_AxE[slot_DxA], 0)
  # A padding row carries expert id `local`: past every group, never computed.
  ids_DxA = jnp.where(valid_DxA, expert_A[slot_DxA] - jnp.arange(ep)[:, None] * local, local)
  send, ids = send_DxAxE.reshape(ep * a, -1), ids_DxA.reshape(ep * a)
  if ep > 1:
    send = jax.lax.all_to_all(send, ep_axis, 0, 0, tiled=True)
    ids = jax.lax.all_to_all(ids, ep_axis, 0, 0, tiled=True)
  order_R = jnp.argsort(ids, stable=True)
  y_sorted = _swiglu_grouped(send[order_R], jnp.bincount(ids, length=local), gate_ExXxM,
                             up_ExXxM, down_XxMxE, dt)
  y_R = jnp.zeros_like(y_sorted).at[order_R].set(y_sorted)
  if ep > 1:
    y_R = jax.lax.all_to_all(y_R, ep_axis, 0, 0, tiled=True)
  # Back at the source: row i of the sorted rows sat in slot i - dstarts[d] of buffer d.
  y_AxE = y_R.reshape(ep, a, -1)[dest_A, jnp.arange(a) - dstarts_D[dest_A]]
  w_A = weights_Nxk.reshape(-1)[order_A]
  out_NxE = jnp.zeros((n, y_AxE.shape[-1]), jnp.float32).at[order_A // k].add(
      y_AxE * w_A[:, None])
  return out_NxE, jnp.zeros((), jnp.int32)


def _dispatch_capacity(x_NxE, weights_Nxk, experts_Nxk, gate_ExXxM, up_ExXxM, down_XxMxE, *,
                       num_experts: int, cap: int, dt, ep_axis, ep: int):
  """`dispatch` with a capacity: each expert's first `cap` rows (token order) of this
  device, the rest dropped. The buffers are static, `cap` rows per expert: device d is
  sent (num_experts / ep) x cap rows, its experts' rows at slot (expert mod local) x cap +
  their position, empty slots zero (a zero row's SwiGLU is zero), and every expert runs
  one dense batched SwiGLU over its ep x cap rows."""
  n, k = experts_Nxk.shape
  a, e = n * k, x_NxE.shape[-1]
  local = num_experts // ep
  flat_A = experts_Nxk.reshape(-1)
  order_A = jnp.argsort(flat_A, stable=True)          # rows grouped by expert, token order
  expert_A = flat_A[order_A]
  sizes_X = jnp.bincount(flat_A, length=num_experts)
  pos_A = jnp.arange(a) - (jnp.cumsum(sizes_X) - sizes_X)[expert_A]
  keep_A = pos_A < cap
  dest_A = jnp.where(keep_A, expert_A // local, ep)  # past the buffers: dropped
  slot_A = (expert_A % local) * cap + jnp.minimum(pos_A, cap - 1)
  send = jnp.zeros((ep, local * cap, e), dt).at[dest_A, slot_A].set(
      x_NxE.astype(dt)[order_A // k], mode="drop")
  if ep > 1:
    send = jax.lax.all_to_all(send.reshape(ep * local * cap, e), ep_axis, 0, 0, tiled=True)
  recv = send.reshape(ep, local, cap, e).swapaxes(0, 1).reshape(local, ep * cap, e)
  proj = lambda w: jnp.einsum("xre,exm->xrm", recv, w.astype(dt),  # noqa: E731
                              preferred_element_type=jnp.float32).astype(dt)
  y = jnp.einsum("xrm,xme->xre", nn.silu(proj(gate_ExXxM)) * proj(up_ExXxM),
                 down_XxMxE.astype(dt), preferred_element_type=jnp.float32)
  y = y.reshape(local, ep, cap, e).swapaxes(0, 1).reshape(ep * local * cap, e)
  if ep > 1:
    y = jax.lax.all_to_all(y, ep_axis, 0, 0, tiled=True)
  y_AxE = y.reshape(ep, local * cap, e)[jnp.minimum(dest_A, ep - 1), slot_A]
  w_A = weights_Nxk.reshape(-1)[order_A] * keep_A
  out_NxE = jnp.zeros((n, e), jnp.float32).at[order_A // k].add(y_AxE * w_A[:, None])
  return out_NxE, jnp.sum(~keep_A).astype(jnp.int32)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def experts_output(cfg: ModelConfig, x_BxTxE, weights_BxTxk, experts_BxTxk, gate, up, down):
  """`dispatch` over the mesh in context: per device under `shard_map` (experts over their
  mesh axes, `embed` gathered, the hidden axis summed), or directly without a mesh.
  Returns (output (B, T, E) float32, dropped rows summed over devices)."""
  dt = cfg.compute_dtype
  b, t, e = x_BxTxE.shape
  mesh = jax.sharding.get_abstract_mesh()
  kw = dict(num_experts=cfg.num_experts, dt=dt)
  P = jax.sharding.PartitionSpec
  batch = nn.logical_to_mesh_axes((ACT_BATCH,))[0] if not mesh.empty else None
  n_devices_tokens = math.prod(mesh.shape[a] for a in _axes(batch))
  # No mesh, or a batch that does not split over it (init's dummy row): the whole batch at
  # once, placed by XLA.
  if mesh.empty or b % n_devices_tokens:
    out, dropped = dispatch(x_BxTxE.reshape(b * t, e), weights_BxTxk.reshape(b * t, -1),
                            experts_BxTxk.reshape(b * t, -1), gate, up, down,
                            cap=capacity(cfg, b * t), **kw)
    return out.reshape(b, t, e), dropped
  w_in = nn.logical_to_mesh_axes((EMBED, EXPERTS, EXPERT_MLP))
  w_out = nn.logical_to_mesh_axes((EXPERTS, EXPERT_MLP, EMBED))
  fsdp, ep_axes, tp = _axes(w_in[0]), _axes(w_in[1]), _axes(w_in[2])
  ep = math.prod(mesh.shape[a] for a in ep_axes)
  if ep > 1 and not set(ep_axes) <= set(_axes(batch)):
    raise ValueError(f"config.sharding_rules: the experts' mesh axes {ep_axes} are not in "
                     f"act_batch's {batch} — expert parallelism sends each device's own "
                     f"tokens; add them to act_batch")
  cap = capacity(cfg, b * t // n_devices_tokens)

  def local(x, w, ex, g, u, d):
    if fsdp:
      g, u = (jax.lax.all_gather(v, fsdp, axis=0, tiled=True) for v in (g, u))
      d = jax.lax.all_gather(d, fsdp, axis=2, tiled=True)
    lb, lt, _ = x.shape
    out, dropped = dispatch(x.reshape(lb * lt, e), w.reshape(lb * lt, -1),
                            ex.reshape(lb * lt, -1), g, u, d, cap=cap,
                            ep_axis=ep_axes or None, ep=ep, **kw)
    if tp:
      out = jax.lax.psum(out, tp)
    if _axes(batch):
      dropped = jax.lax.psum(dropped, _axes(batch))
    return out.reshape(lb, lt, e), dropped

  tok = P(batch, None, None)
  return jax.shard_map(local, mesh=mesh, in_specs=(tok, tok, tok, w_in, w_in, w_out),
                       out_specs=(tok, P()))(x_BxTxE, weights_BxTxk, experts_BxTxk, gate,
                                             up, down)


def apply_moe(cfg: ModelConfig, p: dict, x_BxTxE) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The MoE block on `x` with params `p` (`router`, `gate`, `up`, `down`, `shared_*`):
  (output (B, T, E) in the compute dtype, statistics: `balance`, `z`, `dropped` (the
  fraction of routed rows dropped))."""
  dt = cfg.compute_dtype
  x = x_BxTxE.astype(dt)
  logits_BxTxX = jnp.einsum("bte,ex->btx", x, p["router"].astype(dt),
                            preferred_element_type=jnp.float32)
  weights, experts = route(logits_BxTxX, cfg.experts_per_token, cfg.moe_router)
  x_c = nn.with_logical_constraint(x, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
  out, dropped = experts_output(cfg, x_c, weights, experts, p["gate"], p["up"], p["down"])
  if cfg.shared_mlp_dim:
    h = (nn.silu(jnp.einsum("bte,em->btm", x, p["shared_gate"].astype(dt)))
         * jnp.einsum("bte,em->btm", x, p["shared_up"].astype(dt)))
    out = out + jnp.einsum("btm,me->bte", h, p["shared_down"].astype(dt),
                           preferred_element_type=jnp.float32)
  n = logits_BxTxX.shape[0] * logits_BxTxX.shape[1]
  stats = router_stats(logits_BxTxX.reshape(n, -1), experts.reshape(n, -1))
  stats["dropped"] = dropped.astype(jnp.float32) / experts.size
  return out.astype(dt), stats


class MoE(nn.Module):
  """The MoE block as a flax module (params from the table, `growjax.model.params`); its
  statistics are sown into the `STATS_COLLECTION` collection when it is mutable."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE):
    names = ("router", "gate", "up", "down")
    if self.cfg.shared_mlp_dim:
      names += ("shared_gate", "shared_up", "shared_down")
    p = {name: make_param(self, name) for name in names}
    out, stats = apply_moe(self.cfg, p, x_BxTxE)
    for name, value in stats.items():
      self.sow(STATS_COLLECTION, name, value, init_fn=lambda: jnp.zeros((), jnp.float32),
               reduce_fn=lambda _, v: v)
    return out


def layer_stats(variables: Any) -> dict[str, jax.Array]:
  """The sown statistics of a `Transformer.apply(..., mutable=[STATS_COLLECTION])`: each
  (num_layers,) float32, by name."""
  return dict(variables[STATS_COLLECTION]["layers"]["moe"])
