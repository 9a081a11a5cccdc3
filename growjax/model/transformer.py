"""LLaMA-style decoder-only transformer with scanned layers and logical axis names.

Every parameter is declared once, in `PARAMS`: its path, its logical axes, the
role it plays for the residual stream (reads, writes or scales it) and its
weight-decay class. The modules create their parameters from that table (shape
from `AXIS_FIELDS`, the one axis -> config field table), and everything else
reads it: sharding (`growjax.sharding`), growth (`growjax.growth`) and the
weight-decay mask (`growjax.train.optimizer`). The blocks are applied with `nn.scan`:
each per-layer parameter carries a leading `layers` axis and compile time does
not grow with depth. `scan_unroll` unrolls that loop (same parameters, same
outputs); 0 unrolls every layer, which is faster on GPU (no while loop, so no stacking
of saved residuals; benchmarks/RESULTS.md) at the cost of memory and compile time.

This module only computes logits or final hidden states; the loss lives in
`growjax.model.loss`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name

from growjax.model import fp8
from growjax.model import fp8_swiglu

# Logical axis names of parameters, and the config field that sizes each.
VOCAB, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, LAYERS = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers")
AXIS_FIELDS = {VOCAB: "vocab_size", EMBED: "embed_dim", MLP: "mlp_dim", HEADS: "num_heads",
               KV_HEADS: "num_kv_heads", HEAD_DIM: "head_dim", LAYERS: "num_layers"}
# Logical axis names of activations (sharding constraints only).
ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
    "act_vocab")

# The forward kernels of fused (cuDNN) attention, bf16 and FP8: their outputs are the
# attention output and the softmax statistics its backward needs.
ATTENTION_KERNELS = ("dot_product_attention_fwd_wrapper", "dot_product_attention_fwd",
                     "dot_product_attention_fp8_fwd_wrapper", "dot_product_attention_fp8_fwd")


def attention_kernel_saveable(prim, *_, **__) -> bool:
  """Remat policy: keep what a fused attention kernel returns. Under `dots` alone the
  backward reruns each layer's attention forward to get its softmax statistics back (a
  third of attention's time); MaxText's `minimal_with_context` avoids that rerun too."""
  return prim.name in ATTENTION_KERNELS


_either = jax.checkpoint_policies.save_from_both_policies
# matmul outputs, and FP8's per-tensor scales (scalars: the backward does not reduce the
# operands it recomputes a second time; growjax.model.fp8.SCALE_NAME)
_DOTS = _either(jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                jax.checkpoint_policies.save_only_these_names(fp8.SCALE_NAME))

REMAT_POLICIES = {
    "none": None,  # keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": _DOTS,  # keep matmul outputs (and FP8 scales)
    # matmul outputs and the attention kernel's outputs: the backward reruns no attention
    "dots_attention": _either(_DOTS, attention_kernel_saveable),
    # ... and the down projection's input (`mlp_in`; under FP8 its float8 cast, half the
    # bytes): the backward neither recomputes SwiGLU's product nor casts it again
    "dots_attention_mlp_in": _either(
        _either(_DOTS, attention_kernel_saveable),
        jax.checkpoint_policies.save_only_these_names("mlp_in")),
    "save_proj": jax.checkpoint_policies.save_only_these_names(
        "q_proj", "k_proj", "v_proj", "attn_out", "mlp_in"),
}
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")  # auto: cudnn on GPU, splash on TPU

# ------------------------------------------------------------------ the parameter table

# What a parameter does to the residual stream. A weight that READS it contracts the
# stream axis `embed` (its first axis: `x @ W`); one that WRITES it produces `embed`
# (its last axis) from its other axes; a norm SCALES it (its only axis is `embed`).
READS, WRITES, SCALES = "reads", "writes", "scales"
ROLE_RULES = {
    READS: f"a weight that reads the residual stream contracts '{EMBED}', its first axis "
           f"(x @ W); its other axes are outputs",
    WRITES: f"a weight that writes the residual stream produces '{EMBED}', its last axis, "
            f"from its other axes",
    SCALES: f"a norm scale has the one axis '{EMBED}'",
}
# Weight-decay classes (`growjax.train.optimizer.decay_mask`): matrices are always decayed;
# vocab-sized tables and norm scales as config.optimizer.decay_embeddings / decay_norms say.
DECAY_MATRIX, DECAY_TABLE, DECAY_NORM = "matrix", "table", "norm"
# Initialisers: normal(init_std); normal(init_std / sqrt(2 num_layers)) for the output
# projections of a block; ones.
INIT_STD, INIT_OUT, INIT_ONES = "std", "out", "ones"


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter's declaration: `axes` (logical names, `layers` first for the
  scanned per-layer parameters), `role` for the residual stream, weight-decay class
  `decay`, initialiser `init`."""
  axes: tuple[str, ...]
  role: str
  decay: str
  init: str


_LAYER_PARAMS = {
    "attn_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "attn/q": Param((EMBED, HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/k": Param((EMBED, KV_HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/v": Param((EMBED, KV_HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/o": Param((HEADS, HEAD_DIM, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
    "mlp_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "mlp/gate": Param((EMBED, MLP), READS, DECAY_MATRIX, INIT_STD),
    "mlp/up": Param((EMBED, MLP), READS, DECAY_MATRIX, INIT_STD),
    "mlp/down": Param((MLP, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
}
# Every parameter, by its path in the params tree. `lm_head` is absent when the
# embeddings are tied (the embedding table, transposed, is the head).
PARAMS: dict[str, Param] = {
    "embedding": Param((VOCAB, EMBED), WRITES, DECAY_TABLE, INIT_STD),
    **{f"{LAYERS}/{k}": dataclasses.replace(p, axes=(LAYERS,) + p.axes)
       for k, p in _LAYER_PARAMS.items()},
    "final_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "lm_head": Param((EMBED, VOCAB), READS, DECAY_TABLE, INIT_STD),
}


def check_params(table: dict[str, Param]) -> None:
  """Refuses a declaration whose axes, role, decay class or initialiser disagree."""
  for path, p in table.items():
    where = f"growjax.model.PARAMS[{path!r}]"
    unknown = [a for a in p.axes if a not in AXIS_FIELDS]
    if unknown or len(set(p.axes)) != len(p.axes):
      raise ValueError(f"{where} declares axes {p.axes} — use each of {tuple(AXIS_FIELDS)} "
                       f"at most once")
    scanned = path.startswith(LAYERS + "/")
    if scanned != (p.axes[:1] == (LAYERS,)) or LAYERS in p.axes[1:]:
      raise ValueError(f"{where} declares axes {p.axes} — a parameter under '{LAYERS}/' "
                       f"(the scanned blocks) has '{LAYERS}' as its first axis, others none")
    rest = p.axes[1:] if scanned else p.axes
    fits = {SCALES: rest == (EMBED,),
            READS: len(rest) >= 2 and rest[0] == EMBED and EMBED not in rest[1:],
            WRITES: len(rest) >= 2 and rest[-1] == EMBED and EMBED not in rest[:-1]}
    if p.role not in fits:
      raise ValueError(f"{where} declares role {p.role!r} — choose one of {tuple(fits)}")
    if not fits[p.role]:
      raise ValueError(f"{where} declares role {p.role!r} with axes {p.axes}, but "
                       f"{ROLE_RULES[p.role]} — fix the axes (and the module's einsum) or "
                       f"the role")
    if p.decay not in (DECAY_MATRIX, DECAY_TABLE, DECAY_NORM):
      raise ValueError(f"{where} declares decay class {p.decay!r} — choose "
                       f"{DECAY_MATRIX!r}, {DECAY_TABLE!r} or {DECAY_NORM!r}")
    if p.init not in (INIT_STD, INIT_OUT, INIT_ONES):
      raise ValueError(f"{where} declares init {p.init!r} — choose {INIT_STD!r}, "
                       f"{INIT_OUT!r} or {INIT_ONES!r}")


check_params(PARAMS)


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
  scan_unroll: int = 1        # 0: every layer unrolled (GPU fast path)
  # Whether remat keeps XLA from merging a block's recomputation with its forward (as
  # MaxText does where layers are unrolled). Merged (off), XLA keeps some forward values
  # alive across the step instead of recomputing them (SwiGLU's silu(gate), 0.5 GiB a
  # layer at 1.1B, batch 24). Measured unrolled at 1.1B on an H100: on saves 11 GiB
  # (bf16) and 12-14 GiB (FP8) and costs 1% and 4-6% of tokens/s (benchmarks/RESULTS.md):
  # a switch for memory, off by default. Inside a scan the loop separates them anyway.
  remat_prevent_cse: bool = False
  attention_impl: str = "auto"
  init_std: float = 0.02
  # Packed documents on cuDNN: 'mask' (flash attention with a boolean document mask;
  # no extra memory) or 'ragged' (cuDNN's packed layout: faster, keeps softmax statistics
  # for max_segments documents per window, and folds documents past that into the
  # last); 'auto': the trainer takes ragged where it fits the device
  # (growjax.train.attention_choice), elsewhere it means 'mask'.
  cudnn_packing: str = "auto"
  max_segments: int = 16
  # Document masking's fast path (growjax.train): a (micro-)batch whose rows are each one
  # whole document takes plain causal attention instead of the masked kernel, through a
  # `lax.cond` around the gradient. 'auto': on where the devices are GPUs; 'on' | 'off'.
  single_document_fast_path: str = "auto"
  # 'bf16' | 'fp8': the block projections (q, k, v, o, gate, up, down) as FP8 GEMMs with
  # per-tensor scaling (growjax.model.fp8); attention core, head and loss stay bf16.
  matmul_precision: str = "bf16"
  # FP8 scales: 'delayed' (the largest amax of the last fp8_amax_history steps, kept in
  # the train state: the cast fuses into the op that makes the tensor; growjax.model.fp8) or
  # 'current' (this step's amax of each tensor). Delayed is Transformer Engine's and
  # MaxText's recipe, the faster (1.1B on an H100: 1.31x bf16 with the SwiGLU kernel,
  # current 1.21x) and within 1% of bf16's loss over 2,000 steps (benchmarks/RESULTS.md).
  fp8_scaling: str = "delayed"
  fp8_amax_history: int = 16
  # Delayed FP8's SwiGLU backward as one pass (growjax.model.fp8_swiglu): 'pallas' | 'off';
  # 'auto': the Pallas kernel on a single GPU.
  fp8_swiglu_kernel: str = "auto"

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
    for f in AXIS_FIELDS.values():
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
    fp8.check_precision(self.matmul_precision, f"{where}.matmul_precision")
    fp8.check_scaling(self.fp8_scaling, self.fp8_amax_history, where)
    fp8_swiglu.check_kernel(self.fp8_swiglu_kernel, where)
    if self.cudnn_packing not in ("auto", "mask", "ragged"):
      raise ValueError(f"{where}.cudnn_packing={self.cudnn_packing!r}; choose 'auto', "
                       f"'mask' or 'ragged'.")
    if self.single_document_fast_path not in ("auto", "on", "off"):
      raise ValueError(f"{where}.single_document_fast_path="
                       f"{self.single_document_fast_path!r}; choose 'auto', 'on' or 'off'.")
    if self.max_segments < 1:
      raise ValueError(f"{where}.max_segments={self.max_segments} must be >= 1.")
    if self.scan_unroll < 0:
      raise ValueError(f"{where}.scan_unroll={self.scan_unroll} is negative — set 1 (scan), "
                       f"a divisor of num_layers={self.num_layers}, or 0 to unroll every layer")
    if (self.scan_unroll and self.num_layers % self.scan_unroll
        and self.scan_unroll < self.num_layers):
      raise ValueError(f"{where}.scan_unroll={self.scan_unroll} does not divide "
                       f"num_layers={self.num_layers} — set a divisor of it, or 0 to "
                       f"unroll every layer (the GPU fast path)")

  @property
  def layers_unrolled_per_iteration(self) -> int:
    """The scan's unroll factor: `scan_unroll`, where 0 (or more than the depth) is all
    layers, so a grown model stays fully unrolled whatever its depth."""
    if self.scan_unroll == 0:
      return self.num_layers
    return min(self.scan_unroll, self.num_layers)

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


def _initializer(init: str, cfg: ModelConfig):
  if init == INIT_ONES:
    return nn.initializers.ones
  std = cfg.init_std if init == INIT_STD else cfg.init_std / (2 * cfg.num_layers) ** 0.5
  return nn.initializers.normal(stddev=std)


def _param(module: nn.Module, name: str) -> jax.Array:
  """Creates `module`'s parameter `name` as `PARAMS` declares it: logical axes (the
  scan adds `layers`), shape from `AXIS_FIELDS`, initialiser."""
  path = "/".join(module.path + (name,))
  if path not in PARAMS:
    raise ValueError(f"parameter {path!r} is not declared in growjax.model.PARAMS — "
                     f"declare its axes, role, decay class and init there")
  p, cfg = PARAMS[path], module.cfg
  axes = p.axes[1:] if p.axes[0] == LAYERS else p.axes
  shape = tuple(getattr(cfg, AXIS_FIELDS[a]) for a in axes)
  init = nn.with_logical_partitioning(_initializer(p.init, cfg), axes)
  return module.param(name, init, shape, jnp.dtype(cfg.param_dtype))


def rotary_tables(positions_BxT: jax.Array, head_dim: int, theta: float):
  """`(sin, cos)`, each float32 (B, T, 1, head_dim/2): made once per forward pass and
  shared by every layer. `positions` restart at 0 at each packed document."""
  freq_F = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angle_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * freq_F
  return jnp.sin(angle_BxTxF)[:, :, None, :], jnp.cos(angle_BxTxF)[:, :, None, :]


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


def _cudnn_ragged(segment_ids_BxT: jax.Array, max_segments: int):
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


def _masked_attention(q, k, v, segment_ids_BxT, impl: str | None, cfg: ModelConfig):
  """Causal attention that does not cross documents (`segment_ids`, 0 = padding)."""
  if impl == "cudnn" and cfg.cudnn_packing == "ragged":
    max_segments = cfg.max_segments
    segment_ids_BxT = document_segments(segment_ids_BxT, max_segments)
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
    lengths, offsets = _cudnn_ragged(segment_ids_BxT, max_segments)
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
                                      implementation="cudnn" if impl == "cudnn" else "xla")


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxE, count=None):
    """`count`: how many stream components the mean square is taken over (MSG growth's
    masked embed: `masked_units`); None: all of them."""
    scale_E = _param(self, "scale")
    x = x_BxTxE.astype(jnp.float32)
    if count is None:
      mean_sq = jnp.mean(x * x, axis=-1, keepdims=True)
    else:
      mean_sq = jnp.sum(x * x, axis=-1, keepdims=True) / count
    x = x * jax.lax.rsqrt(mean_sq + self.cfg.norm_eps)
    return (x * scale_E.astype(jnp.float32)).astype(self.cfg.compute_dtype)


def _attention_impl(cfg: ModelConfig) -> str | None:
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  if jax.default_backend() == "gpu" and cfg.compute_dtype in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if jax.default_backend() == "tpu":
    return "splash"
  return "xla"


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
    q_ExNxH, k_ExKxH, v_ExKxH = _param(self, "q"), _param(self, "k"), _param(self, "v")
    o_NxHxE = _param(self, "o")
    x = x_BxTxE.astype(dt)
    q = _project(self, "q", "bte,enh->btnh", x, q_ExNxH, c, "qkv")
    k = _project(self, "k", "bte,ekh->btkh", x, k_ExKxH, c, "qkv", False)
    v = _project(self, "v", "bte,ekh->btkh", x, v_ExKxH, c, "qkv", False)
    q = nn.with_logical_constraint(q, (ACT_BATCH, ACT_LENGTH, ACT_HEADS, None))
    k = nn.with_logical_constraint(k, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    v = nn.with_logical_constraint(v, (ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None))
    q = checkpoint_name(rope(q, rotary), "q_proj")
    k = checkpoint_name(rope(k, rotary), "k_proj")
    v = checkpoint_name(v, "v_proj")
    impl = _attention_impl(c)
    if self.is_initializing():
      impl = "xla"  # init traces a short dummy sequence, where XLA's path serves
    if impl == "splash":  # Pallas TPU kernel (interpreted
      # elsewhere, for tests); init traces a short dummy sequence, where XLA's path serves.
      from growjax.model import splash
      out_BxTxNxH = splash.causal_attention(
          q, k, v, q_axes=(ACT_BATCH, ACT_LENGTH, ACT_HEADS, None),
          kv_axes=(ACT_BATCH, ACT_LENGTH, ACT_KV_HEADS, None),
          segment_ids_BxT=segment_ids_BxT, interpret=jax.default_backend() != "tpu")
    elif segment_ids_BxT is not None:
      out_BxTxNxH = _masked_attention(q, k, v, segment_ids_BxT, impl, c)
    else:
      out_BxTxNxH = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
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
    gate_ExM, up_ExM, down_MxE = _param(self, "gate"), _param(self, "up"), _param(self, "down")
    x = x_BxTxE.astype(dt)
    if _delayed(self, "gate", c) and fp8_swiglu.uses_pallas(c.fp8_swiglu_kernel):
      history = functools.partial(_history, self, c)
      h_BxTxM = fp8_swiglu.swiglu_in(
          x, gate_ExM, up_ExM, history("gate_up_x"), history("gate_g"), history("up_g"),
          out_dtype=dt, pallas=True, interpret=jax.default_backend() != "gpu")
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
    if layer_mask is None:
      x_BxTxE = x_BxTxE + Attention(self.cfg, name="attn")(
          RMSNorm(self.cfg, name="attn_norm")(x_BxTxE), rotary, segment_ids_BxT)
      x_BxTxE = x_BxTxE + SwiGLU(self.cfg, name="mlp")(
          RMSNorm(self.cfg, name="mlp_norm")(x_BxTxE))
    else:
      # Both residual writes pass through the layer's mask and the new embed components'.
      write_E = layer_mask.astype(self.cfg.compute_dtype) * units.get(EMBED, 1)
      count = units.get("count")
      x_BxTxE = x_BxTxE + write_E * Attention(self.cfg, name="attn")(
          RMSNorm(self.cfg, name="attn_norm")(x_BxTxE, count), rotary, segment_ids_BxT,
          units.get(HEADS))
      x_BxTxE = x_BxTxE + write_E * SwiGLU(self.cfg, name="mlp")(
          RMSNorm(self.cfg, name="mlp_norm")(x_BxTxE, count), units.get(MLP))
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, (ACT_BATCH, ACT_LENGTH, ACT_EMBED))
    return x_BxTxE, None


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
    embedding_VxE = _param(self, "embedding")
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
    rotary = rotary_tables(positions, c.head_dim, c.rope_theta)

    block = Block
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy],
                       prevent_cse=c.remat_prevent_cse)
    layers = nn.scan(
        block,
        variable_axes={"params": 0, fp8.HISTORY_COLLECTION: 0},
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
      _param(self, "lm_head")
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


def param_table(cfg: ModelConfig) -> dict:
  """`PARAMS` as a params-shaped tree of `cfg` (no `lm_head` when tied); each leaf a
  `Param`. Built from the table alone: nothing is traced."""
  tree: dict = {}
  for path, p in PARAMS.items():
    if path == "lm_head" and cfg.tie_embeddings:
      continue
    *parents, name = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = p
  return tree


def param_at(key_path: tuple) -> Param:
  """The declaration of the params-tree leaf at a `jax.tree_util` key path."""
  path = "/".join(str(getattr(k, "key", k)) for k in key_path)
  if path not in PARAMS:
    raise ValueError(f"{path!r} is not a parameter declared in growjax.model.PARAMS — "
                     f"pass a params-shaped tree of growjax.model.Transformer")
  return PARAMS[path]


def logical_axes(cfg: ModelConfig) -> Any:
  """Pytree matching the params, each leaf a tuple of logical axis names."""
  return jax.tree.map(lambda p: p.axes, param_table(cfg))


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
