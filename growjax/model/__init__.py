"""The network and its kernels: what a model is and how it is computed.

`transformer` (the LLaMA decoder, its parameter table with axes and roles, `ModelConfig`),
`loss` (chunked cross-entropy), `fp8` and `fp8_swiglu` (FP8 projections), `splash` (TPU
attention). The decoder's public names are handed on here, so `growjax.model.ModelConfig`
reads as the model's own; nothing in this wing imports the trainer, growth or interop.
"""

from growjax.model.transformer import (  # noqa: F401 - the model's public face
    ACT_BATCH, ACT_LENGTH, ATTENTION_KERNELS, AXIS_FIELDS, DECAY_MATRIX, DECAY_NORM,
    DECAY_TABLE, EMBED, HEAD_DIM, HEADS, KV_HEADS, LAYERS, MLP, PARAMS, READS, SCALES,
    VOCAB, WRITES, ModelConfig, Param, Transformer, abstract_params,
    attention_kernel_saveable, check_params, document_segments, head_kernel,
    init_fp8_history, init_params, logical_axes, masked_units, param_at, param_table,
    rope, rotary_tables, uses_fp8_history)
