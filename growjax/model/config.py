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
from growjax.model.attention import ATTENTION_IMPLS, ROPE_SCALINGS
from growjax.model.params import AXIS_FIELDS, MOE_AXES, SHARED_MLP
from growjax.model.remat import REMAT_POLICIES

MOE_ROUTERS = ("topk_softmax", "softmax_topk")

# A field's kind, in its metadata: what the model is, or how it is computed.
KIND, ARCHITECTURE, COMPUTE = "kind", "architecture", "compute"


def _architecture(default=dataclasses.MISSING):
  return dataclasses.field(default=default, metadata={KIND: ARCHITECTURE})


def _compute(default):
  return dataclasses.field(default=default, metadata={KIND: COMPUTE})


# The fields of a model family (below): growth keeps them, and a checkpoint recorded
# before they existed has their defaults (plain LLaMA).
FAMILY_FIELDS = ("rope_scaling", "rope_factor", "rope_low_freq_factor",
                 "rope_high_freq_factor", "rope_original_max_positions", "qkv_bias",
                 "qk_norm", "norm_position", "sliding_window")


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
  # Model families, each a variant of the one parameter table (growjax.model.params):
  # rotary scaling ('none' | 'linear' | 'llama3': Llama 3.x's, with its factors and the
  # original context), q/k/v biases (Qwen2.5), q/k RMSNorm per head ('head': Qwen3) or
  # over the whole projection ('whole': OLMo-2), norms after the sublayers instead of
  # before ('post': OLMo-2), and a sliding attention window (Mistral-7B-v0.1; 0: none).
  rope_scaling: str = _architecture("none")
  rope_factor: float = _architecture(1.0)
  rope_low_freq_factor: float = _architecture(1.0)
  rope_high_freq_factor: float = _architecture(4.0)
  rope_original_max_positions: int = _architecture(8192)
  qkv_bias: bool = _architecture(False)
  qk_norm: str = _architecture("none")
  norm_position: str = _architecture("pre")
  sliding_window: int = _architecture(0)
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
  # A mixture of experts in place of every layer's MLP (growjax.model.moe): num_experts > 0
  # experts of expert_mlp_dim units, experts_per_token of them per token, chosen by
  # `moe_router`: 'topk_softmax' (a softmax over the k largest logits: Mixtral, Qwen3-MoE
  # with norm_topk_prob) or 'softmax_topk' (the k largest of a softmax over all experts,
  # not renormalised); shared_mlp_dim > 0: a SwiGLU of that width every token also takes.
  num_experts: int = _architecture(0)
  experts_per_token: int = _architecture(2)
  expert_mlp_dim: int = _architecture(0)
  shared_mlp_dim: int = _architecture(0)
  moe_router: str = _architecture("topk_softmax")
  # 0: dropless (every routed token computed, grouped matmuls); > 0: each expert takes at
  # most ceil(capacity_factor * tokens * k / num_experts) of a device's tokens in token
  # order, the rest dropped (their share of the MoE output is zero; logged as moe_dropped).
  capacity_factor: float = _compute(0.0)

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
    moe_unused = () if self.num_experts else MOE_AXES
    if self.num_experts and not self.shared_mlp_dim:
      moe_unused = (SHARED_MLP,)
    for a, f in AXIS_FIELDS.items():
      if a in moe_unused:
        continue
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
    self._validate_moe(where)
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"{where}.rope_scaling={self.rope_scaling!r}; choose one of "
                       f"{ROPE_SCALINGS}.")
    if self.rope_scaling != "none" and not self.rope_factor > 0:
      raise ValueError(f"{where}.rope_factor={self.rope_factor} must be positive.")
    if self.rope_scaling == "llama3" and not (
        self.rope_high_freq_factor > self.rope_low_freq_factor > 0
        and self.rope_original_max_positions > 0):
      raise ValueError(f"{where}.rope_high_freq_factor={self.rope_high_freq_factor} must "
                       f"exceed rope_low_freq_factor={self.rope_low_freq_factor} > 0, and "
                       f"rope_original_max_positions={self.rope_original_max_positions} "
                       f"be positive, for rope_scaling='llama3'.")
    if self.qk_norm not in ("none", "head", "whole"):
      raise ValueError(f"{where}.qk_norm={self.qk_norm!r}; choose 'none', 'head' (Qwen3) "
                       f"or 'whole' (OLMo-2).")
    if self.norm_position not in ("pre", "post"):
      raise ValueError(f"{where}.norm_position={self.norm_position!r}; choose 'pre' or "
                       f"'post' (OLMo-2).")
    if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
      raise ValueError(f"{where}.sliding_window={self.sliding_window!r} must be 0 (none) "
                       f"or a positive number of positions.")
    if self.sliding_window and self.attention_impl == "splash":
      raise ValueError(f"{where}.sliding_window={self.sliding_window} is not implemented "
                       f"with attention_impl='splash' — use 'xla' or 'cudnn'.")
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

  def _validate_moe(self, where: str) -> None:
    if self.num_experts < 0 or self.shared_mlp_dim < 0 or self.capacity_factor < 0:
      raise ValueError(f"{where}: num_experts={self.num_experts}, shared_mlp_dim="
                       f"{self.shared_mlp_dim} and capacity_factor={self.capacity_factor} "
                       f"must be >= 0 (0: dense MLP, no shared expert, dropless).")
    if not self.num_experts:
      return
    if not 0 < self.experts_per_token <= self.num_experts:
      raise ValueError(f"{where}.experts_per_token={self.experts_per_token} must be in "
                       f"1..num_experts={self.num_experts} — each token takes that many "
                       f"experts.")
    if self.moe_router not in MOE_ROUTERS:
      raise ValueError(f"{where}.moe_router={self.moe_router!r}; choose one of "
                       f"{MOE_ROUTERS}.")
    if self.matmul_precision == "fp8":
      raise ValueError(f"{where}.matmul_precision='fp8' has no MoE path (num_experts="
                       f"{self.num_experts}) — set 'bf16'.")

  @property
  def layers_unrolled_per_iteration(self) -> int:
    """The scan's unroll factor: `scan_unroll`, where 0 (or more than the depth) is all
    layers, so a grown model stays fully unrolled whatever its depth."""
    if self.scan_unroll == 0:
      return self.num_layers
    return min(self.scan_unroll, self.num_layers)

  def rope_spec(self) -> tuple:
    """The rotary scaling as `growjax.model.attention.rotary_tables` takes it."""
    if self.rope_scaling == "none":
      return ()
    return (self.rope_scaling, float(self.rope_factor), float(self.rope_low_freq_factor),
            float(self.rope_high_freq_factor), int(self.rope_original_max_positions))

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embedding: bool = True, active: bool = False) -> int:
    """Parameter count; without the input embedding it is the N of 6N FLOPs. `active`:
    an MoE model's experts counted experts_per_token times, not num_experts (the
    parameters one token computes with; the same as all of them in a dense model)."""
    e, h = self.embed_dim, self.head_dim
    attn = e * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * e * self.mlp_dim
    if self.num_experts:
      experts = self.experts_per_token if active else self.num_experts
      mlp = e * self.num_experts + 3 * e * (experts * self.expert_mlp_dim
                                            + self.shared_mlp_dim)
    per_layer = attn + mlp + 2 * e + self.family_params_per_layer()
    n = self.num_layers * per_layer + e
    head = self.vocab_size * e
    if include_embedding:
      n += head
    if not self.tie_embeddings or not include_embedding:
      n += head
    return n

  def family_params_per_layer(self) -> int:
    """The model family's own parameters in one layer (biases, q/k norm scales)."""
    h, n, k = self.head_dim, self.num_heads, self.num_kv_heads
    n_params = (n + 2 * k) * h if self.qkv_bias else 0
    n_params += {"none": 0, "head": 2 * h, "whole": (n + k) * h}[self.qk_norm]
    return n_params

  def flops_per_token(self, seq_len: int, causal: bool = False) -> float:
    """Training FLOPs per token: 6N (matmul weights, LM head included; an MoE model's
    active parameters, `num_params(active=True)`) plus attention.

    growjax's convention (PaLM, TinyLlama) counts full attention, 12*L*heads*head_dim*T;
    `causal=True` halves it for the causal mask, as MaxText now does. Both MFU
    figures are logged (`mfu`, `mfu_causal`); compare frameworks by tokens/s.
    """
    n = self.num_params(include_embedding=False, active=True)
    attn = 12 * self.num_layers * self.num_heads * self.head_dim * seq_len
    return 6.0 * n + (attn / 2 if causal else attn)
