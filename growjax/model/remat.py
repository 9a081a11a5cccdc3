"""Which activations a block keeps for its backward (`ModelConfig.remat_policy`): the
named policies the blocks are rematerialised under, apart from the blocks themselves."""

from __future__ import annotations

import jax

from growjax.model import fp8

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
