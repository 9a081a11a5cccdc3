"""`ModelConfig`: a model's hyper-parameters, each field declared as what the model is
(its architecture, which a checkpoint holds) or how it is computed (which a run from a
checkpoint may change), so that split follows from the type rather than a hand-kept list.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from growjax.model import fp8
from growjax.model import fp8_swiglu
from growjax.model import mup
from growjax.model.attention import ATTENTION_IMPLS
from growjax.model.params import AXIS_FIELDS
from growjax.model.remat import REMAT_POLICIES

# A field's kind, in its metadata: what the model is, or how it is computed.
KIND, ARCHITECTURE, COMPUTE = "kind", "architecture", "compute"


def _architecture(default=dataclasses.MISSING):
  return dataclasses.field(default=default, metadata={KIND: ARCHITECTURE})


def _compute(default):
  return dataclasses.field(default=default, metadata={KIND: COMPUTE})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static, hashable model hyper-parameters (built from `config.model`). Each field
  declares its kind (`KIND`): ARCHITECTURE, what a checkpoint is (`architecture()`), or
  COMPUTE, how it is computed, which a run from a checkpoint may change
  (`compute_fields()`)."""
  vocab_size: int = _architecture()
  num_layers: int = _architecture()
  embed_dim: int = _architecture()
  num_heads: int = _architecture()
  num_kv_heads: int = _architecture()
  head_dim: int = _architecture()
  mlp_dim: int = _architecture()
  rope_theta: float = _architecture(10_000.0)
  norm_eps: float = _architecture(1e-5)
  tie_embeddings: bool = _architecture(False)
  # The compute dtype. A checkpoint records it (an imported model's --dtype, the numerics
  # it was trained in) and a run from `init_from` has always had to match it, so it counts
  # as what a checkpoint is; `for_exact_logits` sets float32 to compare two models.
  dtype: str = _architecture("bfloat16")
  param_dtype: str = _architecture("float32")
  remat_policy: str = _compute("none")
  scan_unroll: int = _compute(1)        # 0: every layer unrolled (GPU fast path)
  # Whether remat keeps XLA from merging a block's recomputation with its forward (as
  # MaxText does where layers are unrolled). Merged (off), XLA keeps some forward values
  # alive across the step instead of recomputing them (SwiGLU's silu(gate), 0.5 GiB a
  # layer at 1.1B, batch 24). Measured unrolled at 1.1B on an H100: on saves 11 GiB
  # (bf16) and 12-14 GiB (FP8) and costs 1% and 4-6% of tokens/s (benchmarks/RESULTS.md):
  # a switch for memory, off by default. Inside a scan the loop separates them anyway.
  remat_prevent_cse: bool = _compute(False)
  attention_impl: str = _compute("auto")
  init_std: float = _architecture(0.02)
  # 'sp' (standard) or 'mup': init scales, Adam learning rates and forward multipliers
  # that follow width and depth against a base shape (growjax.model.mup), so that
  # hyper-parameters tuned at the base transfer and a grown model needs no retuning.
  parametrization: str = _architecture("sp")
  mup_base_embed_dim: int = _architecture(0)    # the width m = embed_dim / this is 1 at
  mup_base_num_layers: int = _architecture(0)   # the depth L0 of the branch multiplier
  mup_base_head_dim: int = _architecture(0)     # h0 of the attention scale; 0: head_dim
  mup_depth_alpha: float = _architecture(1.0)   # 0 width-only, 0.5 Depth-μP, 1 CompleteP
  # Packed documents on cuDNN: 'mask' (flash attention with a boolean document mask;
  # no extra memory) or 'ragged' (cuDNN's packed layout: faster, keeps softmax statistics
  # for max_segments documents per window, and folds documents past that into the
  # last); 'auto': the trainer takes ragged where it fits the device
  # (growjax.train.attention_choice), elsewhere it means 'mask'.
  cudnn_packing: str = _compute("auto")
  max_segments: int = _compute(16)
  # Document masking's fast path (growjax.train): a (micro-)batch whose rows are each one
  # whole document takes plain causal attention instead of the masked kernel, through a
  # `lax.cond` around the gradient. 'auto': on where the devices are GPUs; 'on' | 'off'.
  single_document_fast_path: str = _compute("auto")
  # 'bf16' | 'fp8': the block projections (q, k, v, o, gate, up, down) as FP8 GEMMs with
  # per-tensor scaling (growjax.model.fp8); attention core, head and loss stay bf16.
  matmul_precision: str = _compute("bf16")
  # FP8 scales: 'delayed' (the largest amax of the last fp8_amax_history steps, kept in
  # the train state: the cast fuses into the op that makes the tensor; growjax.model.fp8) or
  # 'current' (this step's amax of each tensor). Delayed is Transformer Engine's and
  # MaxText's recipe, the faster (1.1B on an H100: 1.31x bf16 with the SwiGLU kernel,
  # current 1.21x) and within 1% of bf16's loss over 2,000 steps (benchmarks/RESULTS.md).
  fp8_scaling: str = _compute("delayed")
  fp8_amax_history: int = _compute(16)
  # Delayed FP8's SwiGLU backward as one pass (growjax.model.fp8_swiglu): 'pallas' | 'off';
  # 'auto': the Pallas kernel on a single GPU.
  fp8_swiglu_kernel: str = _compute("auto")

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

  @classmethod
  def compute_fields(cls) -> tuple[str, ...]:
    """How the model is computed, not what it is (remat, scan unrolling, attention
    kernel, FP8): the fields a run started from a checkpoint may change."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata[KIND] == COMPUTE)

  def architecture(self) -> dict:
    """The fields that define a checkpoint (shapes, vocab, norms, rotary, tying, dtypes,
    init), by name: two configs with the same architecture read the same checkpoint."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.metadata[KIND] == ARCHITECTURE}

  def for_inference(self) -> "ModelConfig":
    """Computed for reading the model (evaluation, decoding): nothing is differentiated,
    so no activation is recomputed (remat off)."""
    return self.replace(remat_policy="none")

  def for_exact_logits(self) -> "ModelConfig":
    """Computed to compare two models' logits to float32 precision (how much a growth
    changes the function): float32 throughout and XLA's attention, the same on every
    backend, besides `for_inference`."""
    return self.for_inference().replace(dtype="float32", attention_impl="xla")

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
    mup.check(self, where)
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
