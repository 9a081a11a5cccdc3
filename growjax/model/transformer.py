"""LLaMA-style decoder-only transformer with scanned layers and logical axis names.

The flax modules: RMSNorm, attention (its backends in `growjax.model.attention`), SwiGLU,
the pre-norm block and the decoder. They create their parameters as the parameter table
declares them (`growjax.model.params`), their hyper-parameters are a `ModelConfig`
(`growjax.model.config`) and their remat policies are `growjax.model.remat`'s. The blocks
are applied with `nn.scan`: each per-layer parameter carries a leading `layers` axis and
compile time does not grow with depth. `scan_unroll` unrolls that loop (same parameters,
same outputs); 0 unrolls every layer, which is faster on GPU (no while loop, so no stacking
of saved residuals; benchmarks/RESULTS.md) at the cost of memory and compile time.

This module only computes logits or final hidden states; the loss lives in
`growjax.model.loss`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from growjax.model import attention
from growjax.model import fp8
from growjax.model import fp8_swiglu
from growjax.model import moe
from growjax.model import mup
from growjax.model.config import ModelConfig
from growjax.model.create import make_param
from growjax.model.params import (ACT_BATCH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_LENGTH,
                                  ACT_MLP, ACT_VOCAB, EMBED, HEADS, LAYERS, MLP)
from growjax.model.remat import REMAT_POLICIES


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, count=None):
    """`count`: how many stream components the mean square is taken over (MSG growth's
    masked embed: `masked_units`); None: all of them."""
    scale_E = make_param(self, "scale")
    x = x_BxTxE.astype(jnp.float32)
    if count is None:
      mean_sq = jnp.mean(x * x, axis=-1, keepdims=True)
    else:
      mean_sq = jnp.sum(x * x, axis=-1, keepdims=True) / count
    x = x * jax.lax.rsqrt(mean_sq + self.cfg.norm_eps)
    return (x * scale_E.astype(jnp.float32)).astype(self.cfg.compute_dtype)


class HeadNorm(nn.Module):
  """RMSNorm of q or k `(B, T, N, H)` over its last `axes` axes (1: each head, Qwen3;
  2: the whole projection, OLMo-2), with a scale of those axes' shape."""
  cfg: ModelConfig
  axes: int

  @nn.compact
  def __call__(self, x_BxTxNxH):
    scale = make_param(self, "scale")
    return head_norm(x_BxTxNxH, scale, self.axes, self.cfg.norm_eps, self.cfg.compute_dtype)


def head_norm(x, scale, axes: int, eps: float, dt):
  """`HeadNorm`'s function (shared with `growjax.model.decode`)."""
  x = x.astype(jnp.float32)
  mean_sq = jnp.mean(x * x, axis=tuple(range(-axes, 0)), keepdims=True)
  return (x * jax.lax.rsqrt(mean_sq + eps) * scale.astype(jnp.float32)).astype(dt)


def _delayed(module: nn.Module, name: str, cfg: ModelConfig) -> bool:
  """Whether projection `name` scales by its amax histories: delayed FP8, and the
  histories given (training) or being made (init)."""
  return uses_fp8_history(cfg) and (
      module.is_initializing() or module.has_variable(fp8.HISTORY_COLLECTION, f"{name}_g"))


def _history(module: nn.Module, cfg: ModelConfig, name: str):
  if module.has_variable(fp8.HISTORY_COLLECTION, name):
    return module.get_variable(fp8.HISTORY_COLLECTION, name)
  return module.variable(fp8.HISTORY_COLLECTION, name, jnp.zeros, (cfg.fp8_amax_history,),
                         jnp.float32).value


def _project(module: nn.Module, name: str, spec: str, x, w, cfg: ModelConfig,
             x_name: str | None = None, observe_x: bool = True, save_x_as: str | None = None):
  """One block projection in the compute dtype, through FP8 GEMMs when
  `matmul_precision='fp8'`. With `fp8_scaling='delayed'` and the amax histories given
  (collection `fp8.HISTORY_COLLECTION`: `{x_name}_x` of the input, shared by the
  projections that read it, and `{name}_g` of the output gradient; training passes
  them), the activation and gradient scales come from them; without them (eval,
  sampling) the projection scales by the current amax. `save_x_as` names the float8
  cast of `x` for remat policies (the backward's operand of dw)."""
  x_name = x_name or name
  if _delayed(module, name, cfg):
    history = functools.partial(_history, module, cfg)
    return fp8.delayed_einsum(spec, x, w, history(f"{x_name}_x"), history(f"{name}_g"),
                              out_dtype=cfg.compute_dtype, observe_x=observe_x,
                              save_x_as=save_x_as)
  return fp8.einsum(spec, x, w, out_dtype=cfg.compute_dtype, precision=cfg.matmul_precision,
                    save_x_as=save_x_as)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, rotary, segment_ids_BxT=None, heads_mask_Nx1=None):
    c = self.cfg
    dt = c.compute_dtype
    q_ExNxH, k_ExKxH = make_param(self, "q"), make_param(self, "k")
    v_ExKxH, o_NxHxE = make_param(self, "v"), make_param(self, "o")
    x = x_BxTxE.astype(dt)
    q = _project(self, "q", "bte,enh->btnh", x, q_ExNxH, c, "qkv")
    k = _project(self, "k", "bte,ekh->btkh", x, k_ExKxH, c, "qkv", False)
    v = _project(self, "v", "bte,ekh->btkh", x, v_ExKxH, c, "qkv", False)
    if c.qkv_bias:      # Qwen2
      q, k, v = (y + make_param(self, f"{n}_bias").astype(dt)
                 for n, y in (("q", q), ("k", k), ("v", v)))
    if c.qk_norm == "head":      # Qwen3: each head's q and k
      q, k = HeadNorm(c, 1, name="q_norm")(q), HeadNorm(c, 1, name="k_norm")(k)
    elif c.qk_norm == "whole":   # OLMo-2: the whole projection, all heads at once
      q, k = HeadNorm(c, 2, name="q_whole_norm")(q), HeadNorm(c, 2, name="k_whole_norm")(k)
    q = nn.with_logical_constraint(q, (ACT_BATCH, ACT_LENGTH, ACT_HEADS, None))
    k = nn.with_logical_constraint(k, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    v = nn.with_logical_constraint(v, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    if mup.query_multiplier(c) != 1.0:   # μP: logits scale as sqrt(h0) / head_dim
      q = q * jnp.asarray(mup.query_multiplier(c), q.dtype)
    q = checkpoint_name(attention.rope(q, rotary), "q_proj")
    k = checkpoint_name(attention.rope(k, rotary), "k_proj")
    v = checkpoint_name(v, "v_proj")
    impl = attention.backend(c)
    if self.is_initializing():
      impl = "xla"  # init traces a short dummy sequence, where XLA's path serves
    out_BxTxNxH = attention.causal_attention(q, k, v, segment_ids_BxT, impl, c)
    out_BxTxNxH = checkpoint_name(out_BxTxNxH, "attn_out")
    if heads_mask_Nx1 is not None:   # MSG growth: new heads enter through their mask
      out_BxTxNxH = out_BxTxNxH * heads_mask_Nx1
    return _project(self, "o", "btnh,nhe->bte", out_BxTxNxH, o_NxHxE, c)


class SwiGLU(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, mlp_mask_M=None):
    c = self.cfg
    dt = c.compute_dtype
    gate_ExM, up_ExM = make_param(self, "gate"), make_param(self, "up")
    down_MxE = make_param(self, "down")
    x = x_BxTxE.astype(dt)
    if _delayed(self, "gate", c) and fp8_swiglu.uses_pallas(c.fp8_swiglu_kernel):
      history = functools.partial(_history, self, c)
      h_BxTxM = fp8_swiglu.swiglu_in(
          x, gate_ExM, up_ExM, history("gate_up_x"), history("gate_g"), history("up_g"),
          out_dtype=dt, pallas=True, interpret=attention.platform() != "gpu")
    else:
      h_BxTxM = (nn.silu(_project(self, "gate", "bte,em->btm", x, gate_ExM, c, "gate_up"))
                 * _project(self, "up", "bte,em->btm", x, up_ExM, c, "gate_up", False))
    h_BxTxM = nn.with_logical_constraint(h_BxTxM, (ACT_BATCH, ACT_LENGTH, ACT_MLP))
    if c.matmul_precision != "fp8":  # under FP8 the name goes to the float8 cast of h
      h_BxTxM = checkpoint_name(h_BxTxM, "mlp_in")
    if mlp_mask_M is not None:       # MSG growth: new neurons enter through their mask
      h_BxTxM = h_BxTxM * mlp_mask_M
    return _project(self, "down", "btm,me->bte", h_BxTxM, down_MxE, c, save_x_as="mlp_in")


class Block(nn.Module):
  """Pre-norm residual block; `(x, rotary, segment_ids) -> (x, None)` so it can be
  scanned. MSG growth adds this layer's mask (a scalar) and the unit masks
  (`masked_units`); without them nothing of the masks is traced."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, rotary, segment_ids_BxT=None, layer_mask=None, units=None):
    branch = mup.branch_multiplier(self.cfg)   # depth-μP's (L0 / L)^alpha; 1 under SP
    scaled = (lambda y: y) if branch == 1.0 else (
        lambda y: y * jnp.asarray(branch, y.dtype))
    if self.cfg.norm_position == "post":   # OLMo-2: x + norm(sublayer(x))
      count = None if units is None else units.get("count")
      write_E = branch if layer_mask is None else (
          layer_mask.astype(self.cfg.compute_dtype) * units.get(EMBED, 1) * branch)
      x_BxTxE = x_BxTxE + write_E * RMSNorm(self.cfg, name="attn_norm")(
          Attention(self.cfg, name="attn")(x_BxTxE, rotary, segment_ids_BxT,
                                           None if units is None else units.get(HEADS)),
          count)
      x_BxTxE = x_BxTxE + write_E * RMSNorm(self.cfg, name="mlp_norm")(
          SwiGLU(self.cfg, name="mlp")(x_BxTxE, None if units is None else units.get(MLP)),
          count)
    elif layer_mask is None:
      x_BxTxE = x_BxTxE + scaled(Attention(self.cfg, name="attn")(
          RMSNorm(self.cfg, name="attn_norm")(x_BxTxE), rotary, segment_ids_BxT))
      x_BxTxE = x_BxTxE + scaled(self._mlp(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxE)))
    else:
      # Both residual writes pass through the layer's mask and the new embed components'.
      write_E = layer_mask.astype(self.cfg.compute_dtype) * units.get(EMBED, 1) * branch
      count = units.get("count")
      x_BxTxE = x_BxTxE + write_E * Attention(self.cfg, name="attn")(
          RMSNorm(self.cfg, name="attn_norm")(x_BxTxE, count), rotary, segment_ids_BxT,
          units.get(HEADS))
      x_BxTxE = x_BxTxE + write_E * self._mlp(
          RMSNorm(self.cfg, name="mlp_norm")(x_BxTxE, count), units.get(MLP))
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
    return x_BxTxE, None

  def _mlp(self, h_BxTxE, mlp_mask_M=None):
    """The layer's MLP: a SwiGLU, or a mixture of experts (num_experts > 0)."""
    if self.cfg.num_experts:
      return moe.MoE(self.cfg, name="moe")(h_BxTxE)
    return SwiGLU(self.cfg, name="mlp")(h_BxTxE, mlp_mask_M)


class Transformer(nn.Module):
  """Token ids `(batch, seq)` int32 -> logits `(batch, seq, vocab)` (or final hidden).

  Packed windows pass `segment_ids` (1, 2, ... per document, 0 for padding; attention
  stays inside a document) and `positions` (restarting at each document, for the
  rotary embedding); without them the window is one causal sequence."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT, *, segment_ids=None, positions=None,
               return_hidden: bool = False, masks=None):
    c = self.cfg
    dt = c.compute_dtype
    embedding_VxE = make_param(self, "embedding")
    x_BxTxE = jnp.take(embedding_VxE, tokens_BxT, axis=0).astype(dt)
    units, extra, extra_axes = None, (), ()
    if masks is not None:   # MSG growth's ramp (growjax.train.mask_ramp); see `masked_units`
      units = masked_units(masks, c)
      extra = (masks.get(LAYERS, jnp.ones((c.num_layers,), jnp.float32)), units)
      extra_axes = (0, nn.broadcast)   # one layer mask per scanned layer
      if EMBED in units:
        x_BxTxE = x_BxTxE * units[EMBED]
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
    if positions is None:
      positions = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)[None]
    rotary = attention.rotary_tables(positions, c.head_dim, c.rope_theta, c.rope_spec())

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy],
                       prevent_cse=c.remat_prevent_cse)
    layers = nn.scan(
        block,
        variable_axes={"params": 0, fp8.HISTORY_COLLECTION: 0, moe.STATS_COLLECTION: 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast) + extra_axes,
        length=c.num_layers,
        unroll=c.layers_unrolled_per_iteration,
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )(c, name="layers")
    x_BxTxE, _ = layers(x_BxTxE, rotary, segment_ids, *extra)
    x_BxTxE = RMSNorm(c, name="final_norm")(
        x_BxTxE, None if units is None else units.get("count"))
    if not c.tie_embeddings:
      make_param(self, "lm_head")
    if return_hidden:
      return x_BxTxE
    head_ExV = head_kernel(self.variables["params"], c)
    logits = jnp.einsum("bte,ev->btv", x_BxTxE, head_ExV.astype(dt),
                        preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, (ACT_BATCH, ACT_LENGTH, ACT_VOCAB))


def masked_units(masks: dict, cfg: ModelConfig) -> dict:
  """MSG growth's mask values (`growjax.train.mask_ramp`: per large layer `layers` (L,), per
  unit `mlp` (M,), `heads` (N,), `embed` (E,), any of them absent) as the blocks apply
  them, in the compute dtype: new neurons' and heads' outputs and new stream components
  of every residual write and of the embedding are multiplied by their mask. With an
  embed mask every RMSNorm takes its mean square over `count` = sum(mask^2) components:
  at mask 0 the new components are zero and the statistics are the small model's; at 1
  it is the plain mean."""
  dt = cfg.compute_dtype
  units = {}
  if MLP in masks:
    units[MLP] = masks[MLP].astype(dt)
  if HEADS in masks:
    units[HEADS] = masks[HEADS].astype(dt)[:, None]
  if EMBED in masks:
    embed_E = masks[EMBED].astype(jnp.float32)
    units[EMBED] = embed_E.astype(dt)
    units["count"] = jnp.sum(embed_E * embed_E)
  return units


def head_kernel(params: Any, cfg: ModelConfig) -> jax.Array:
  """The `(embed, vocab)` output projection: the LM head, or the tied embedding, times
  μP's logit multiplier 1 / m (`growjax.model.mup`; nothing under SP)."""
  params = nn.unbox(params)
  head = params["embedding"].T if cfg.tie_embeddings else params["lm_head"]
  scale = mup.logit_multiplier(cfg)
  return head if scale == 1.0 else head * jnp.asarray(scale, head.dtype)


def abstract_params(cfg: ModelConfig, seq_len: int = 8):
  """Boxed (logically annotated) parameter shapes, without allocating anything."""
  model = Transformer(cfg)
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  return jax.eval_shape(lambda r, t: model.init(r, t)["params"], jax.random.key(0), tokens)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Any:
  """Unboxed float parameters (use under `jax.jit(out_shardings=...)` to create sharded)."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(Transformer(cfg).init(rng, tokens)["params"])


def uses_fp8_history(cfg: ModelConfig) -> bool:
  return cfg.matmul_precision == "fp8" and cfg.fp8_scaling == "delayed"


def init_fp8_history(cfg: ModelConfig) -> Any:
  """The zero amax histories of delayed FP8 scaling (`{layers: {attn: {qkv_x, q_g, k_g,
  v_g, o_x, o_g}, mlp: {gate_up_x, gate_g, up_g, down_x, down_g}}}`, each
  `(num_layers, fp8_amax_history)` float32), None without it.
  Zero means not yet calibrated (growjax.train calibrates with one current-scaling
  pass)."""
  if not uses_fp8_history(cfg):
    return None
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda t: Transformer(cfg).init(jax.random.key(0), t),
                          tokens)[fp8.HISTORY_COLLECTION]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
