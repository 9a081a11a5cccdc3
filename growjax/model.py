"""LLaMA-style decoder-only transformer with scanned layers and logical axis names.

Every parameter is created through `nn.with_logical_partitioning`, so the same
names drive sharding (`growjax.sharding`) and growth (`growjax.growth`). The
blocks are applied with `nn.scan`: each per-layer parameter carries a leading
`layers` axis and compile time does not grow with depth. `scan_unroll` unrolls
that loop (same parameters, same outputs) when a fully unrolled graph is wanted.

This module only computes logits or final hidden states; the loss lives in
`growjax.loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name

# Logical axis names of parameters. Growth operators rely on these being exact.
VOCAB, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, LAYERS = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers")
# Logical axis names of activations (sharding constraints only).
ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
    "act_vocab")

REMAT_POLICIES = {
    "none": None,  # keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    "save_proj": jax.checkpoint_policies.save_only_these_names(
        "q_proj", "k_proj", "v_proj", "attn_out", "mlp_in"),
}
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")  # auto: cudnn on GPU, splash on TPU


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static, hashable model hyper-parameters (built from `config.model`)."""
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_unroll: int = 1
  attention_impl: str = "auto"
  init_std: float = 0.02

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict | dict) -> "ModelConfig":
    cfg = dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - names)
    if unknown:
      raise ValueError(f"config.model has unknown field(s) {unknown}; known fields: "
                       f"{sorted(names)}.")
    return cls(**cfg)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def validate(self, where: str = "config.model") -> None:
    """Fails early with the field and the fix, before any array is made."""
    for f in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads",
              "head_dim", "mlp_dim"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"{where}.{f} must be a positive integer, got {v!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"{where}.num_heads={self.num_heads} is not a multiple of "
          f"{where}.num_kv_heads={self.num_kv_heads}; grouped-query attention needs "
          f"each kv head shared by a whole number of query heads.")
    if self.head_dim % 2:
      raise ValueError(f"{where}.head_dim={self.head_dim} must be even for rotary "
                       f"embeddings.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"{where}.remat_policy={self.remat_policy!r}; choose one of "
                       f"{sorted(REMAT_POLICIES)}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"{where}.attention_impl={self.attention_impl!r}; choose one of "
                       f"{ATTENTION_IMPLS}.")
    for f in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, f))
      except TypeError:
        raise ValueError(f"{where}.{f}={getattr(self, f)!r} is not a dtype name "
                         f"(e.g. 'bfloat16', 'float32').") from None
    if self.scan_unroll < 1 or (self.num_layers % self.scan_unroll
                                and self.scan_unroll < self.num_layers):
      raise ValueError(f"{where}.scan_unroll={self.scan_unroll} must be >= 1 and divide "
                       f"num_layers={self.num_layers} (or be >= it for full unrolling).")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embedding: bool = True) -> int:
    """Parameter count; without the input embedding it is the N of 6N FLOPs."""
    e, h = self.embed_dim, self.head_dim
    attn = e * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * e * self.mlp_dim + 2 * e
    n = self.num_layers * per_layer + e
    head = self.vocab_size * e
    if include_embedding:
      n += head
    if not self.tie_embeddings or not include_embedding:
      n += head
    return n

  def flops_per_token(self, seq_len: int, causal: bool = False) -> float:
    """Training FLOPs per token: 6N (matmul weights, LM head included) plus attention.

    growjax's convention (PaLM, TinyLlama) counts full attention, 12*L*heads*head_dim*T;
    `causal=True` halves it for the causal mask, as MaxText now does. Both MFU
    figures are logged (`mfu`, `mfu_causal`); compare frameworks by tokens/s.
    """
    n = self.num_params(include_embedding=False)
    attn = 12 * self.num_layers * self.num_heads * self.head_dim * seq_len
    return 6.0 * n + (attn / 2 if causal else attn)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _rope(x_BxTxNxH: jax.Array, positions_T: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (half-split layout), computed in float32."""
  h = x_BxTxNxH.shape[-1]
  freq_F = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  angle_TxF = positions_T.astype(jnp.float32)[:, None] * freq_F[None, :]
  sin, cos = jnp.sin(angle_TxF)[None, :, None, :], jnp.cos(angle_TxF)[None, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE):
    scale_E = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                         (x_BxTxE.shape[-1],), jnp.dtype(self.cfg.param_dtype))
    x = x_BxTxE.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
    return (x * scale_E.astype(jnp.float32)).astype(self.cfg.compute_dtype)


def _attention_impl(cfg: ModelConfig) -> str | None:
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  if jax.default_backend() == "gpu" and cfg.compute_dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if jax.default_backend() == "tpu":
    return "splash"
  return "xla"


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, positions_T):
    c = self.cfg
    dt, pdt = c.compute_dtype, jnp.dtype(c.param_dtype)
    out_std = c.init_std / (2 * c.num_layers) ** 0.5
    init = lambda names, std=c.init_std: nn.with_logical_partitioning(_normal(std), names)
    q_ExNxH = self.param("q", init((EMBED, HEADS, HEAD_DIM)),
                         (c.embed_dim, c.num_heads, c.head_dim), pdt)
    k_ExKxH = self.param("k", init((EMBED, KV_HEADS, HEAD_DIM)),
                         (c.embed_dim, c.num_kv_heads, c.head_dim), pdt)
    v_ExKxH = self.param("v", init((EMBED, KV_HEADS, HEAD_DIM)),
                         (c.embed_dim, c.num_kv_heads, c.head_dim), pdt)
    o_NxHxE = self.param("o", init((HEADS, HEAD_DIM, EMBED), out_std),
                         (c.num_heads, c.head_dim, c.embed_dim), pdt)
    x = x_BxTxE.astype(dt)
    q = jnp.einsum("bte,enh->btnh", x, q_ExNxH.astype(dt))
    k = jnp.einsum("bte,ekh->btkh", x, k_ExKxH.astype(dt))
    v = jnp.einsum("bte,ekh->btkh", x, v_ExKxH.astype(dt))
    q = nn.with_logical_constraint(q, (ACT_BATCH, ACT_LENGTH, ACT_HEADS, None))
    k = nn.with_logical_constraint(k, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    v = nn.with_logical_constraint(v, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    q = checkpoint_name(_rope(q, positions_T, c.rope_theta), "q_proj")
    k = checkpoint_name(_rope(k, positions_T, c.rope_theta), "k_proj")
    v = checkpoint_name(v, "v_proj")
    impl = _attention_impl(c)
    if impl == "splash" and not self.is_initializing():  # Pallas TPU kernel (interpreted
      # elsewhere, for tests); init traces a short dummy sequence, where XLA's path serves.
      from growjax import splash
      out_BxTxNxH = splash.causal_attention(
          q, k, v, q_axes=(ACT_BATCH, ACT_LENGTH, ACT_HEADS, None),
          kv_axes=(ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None),
          interpret=jax.default_backend() != "tpu")
    else:
      out_BxTxNxH = jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation=None if impl == "splash" else impl)
    out_BxTxNxH = checkpoint_name(out_BxTxNxH, "attn_out")
    return jnp.einsum("btnh,nhe->bte", out_BxTxNxH, o_NxHxE.astype(dt))


class SwiGLU(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE):
    c = self.cfg
    dt, pdt = c.compute_dtype, jnp.dtype(c.param_dtype)
    out_std = c.init_std / (2 * c.num_layers) ** 0.5
    gate_ExM = self.param("gate", nn.with_logical_partitioning(_normal(c.init_std), (EMBED, MLP)),
                          (c.embed_dim, c.mlp_dim), pdt)
    up_ExM = self.param("up", nn.with_logical_partitioning(_normal(c.init_std), (EMBED, MLP)),
                        (c.embed_dim, c.mlp_dim), pdt)
    down_MxE = self.param("down", nn.with_logical_partitioning(_normal(out_std), (MLP, EMBED)),
                          (c.mlp_dim, c.embed_dim), pdt)
    x = x_BxTxE.astype(dt)
    h_BxTxM = nn.silu(x @ gate_ExM.astype(dt)) * (x @ up_ExM.astype(dt))
    h_BxTxM = nn.with_logical_constraint(h_BxTxM, (ACT_BATCH, ACT_LENGTH, ACT_MLP))
    h_BxTxM = checkpoint_name(h_BxTxM, "mlp_in")
    return h_BxTxM @ down_MxE.astype(dt)


class Block(nn.Module):
  """Pre-norm residual block; `(x, positions) -> (x, None)` so it can be scanned."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, positions_T):
    x_BxTxE = x_BxTxE + Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg, name="attn_norm")(x_BxTxE), positions_T)
    x_BxTxE = x_BxTxE + SwiGLU(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxE))
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
    return x_BxTxE, None


class Transformer(nn.Module):
  """Token ids `(batch, seq)` int32 -> logits `(batch, seq, vocab)` (or final hidden)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT, *, return_hidden: bool = False):
    c = self.cfg
    dt, pdt = c.compute_dtype, jnp.dtype(c.param_dtype)
    embedding_VxE = self.param(
        "embedding", nn.with_logical_partitioning(_normal(c.init_std), (VOCAB, EMBED)),
        (c.vocab_size, c.embed_dim), pdt)
    x_BxTxE = jnp.take(embedding_VxE, tokens_BxT, axis=0).astype(dt)
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
    positions_T = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
    layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,),
        length=c.num_layers,
        unroll=min(c.scan_unroll, c.num_layers),
        metadata_params={nn.PARTITION_NAME: LAYERS},
    )(c, name="layers")
    x_BxTxE, _ = layers(x_BxTxE, positions_T)
    x_BxTxE = RMSNorm(c, name="final_norm")(x_BxTxE)
    if not c.tie_embeddings:
      self.param("lm_head", nn.with_logical_partitioning(_normal(c.init_std), (EMBED, VOCAB)),
                 (c.embed_dim, c.vocab_size), pdt)
    if return_hidden:
      return x_BxTxE
    head_ExV = head_kernel(self.variables["params"], c)
    logits = jnp.einsum("bte,ev->btv", x_BxTxE, head_ExV.astype(dt),
                        preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, (ACT_BATCH, ACT_LENGTH, ACT_VOCAB))


def head_kernel(params: Any, cfg: ModelConfig) -> jax.Array:
  """The `(embed, vocab)` output projection: the LM head, or the tied embedding."""
  params = nn.unbox(params)
  if cfg.tie_embeddings:
    return params["embedding"].T
  return params["lm_head"]


def abstract_params(cfg: ModelConfig, seq_len: int = 8):
  """Boxed (logically annotated) parameter shapes, without allocating anything."""
  model = Transformer(cfg)
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  return jax.eval_shape(lambda r, t: model.init(r, t)["params"], jax.random.key(0), tokens)


def logical_axes(cfg: ModelConfig) -> Any:
  """Pytree matching the params, each leaf a tuple of logical axis names."""
  specs = nn.get_partition_spec(abstract_params(cfg))
  return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def init_params(cfg: ModelConfig, rng: jax.Array) -> Any:
  """Unboxed float parameters (use under `jax.jit(out_shardings=...)` to create sharded)."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(Transformer(cfg).init(rng, tokens)["params"])
