"""The network and its kernels: what a model is and how it is computed.

`config` (`ModelConfig`, each field declared as architecture or compute), `params` (the
parameter table: logical axes, roles, decay classes), `transformer` (the LLaMA decoder's
flax modules), `attention` (its backends and rotary positions), `remat` (the remat
policies), `mup` (μP and depth-μP: init, learning rates, multipliers), `create`
(make_param: a declared parameter's shape and initialiser), `loss` (chunked
cross-entropy), `fp8` and `fp8_swiglu` (FP8 projections),
`splash` (TPU attention), `decode` (KV-cache sampling). The decoder's public names are
handed on here, so `growjax.model.ModelConfig` reads as the model's own; nothing in this
wing imports the trainer, growth or interop.
"""

# The model's public face, handed on.
from growjax.model import mup  # noqa: F401
from growjax.model.attention import document_segments, rope, rotary_tables  # noqa: F401
from growjax.model.config import FAMILY_FIELDS, ModelConfig  # noqa: F401
from growjax.model.params import (  # noqa: F401
    ACT_BATCH, ACT_LENGTH, AXIS_FIELDS, DECAY_MATRIX, DECAY_NORM, DECAY_TABLE, EMBED,
    FAMILY_PARAMS, HEAD_DIM, HEADS, KV_HEADS, LAYERS, MLP, OUTPUT, PARAMS, READS, SCALES,
    VOCAB, WRITES, Param, check_params, logical_axes, param_at, param_table, present)
from growjax.model.remat import ATTENTION_KERNELS, attention_kernel_saveable  # noqa: F401
from growjax.model.transformer import (  # noqa: F401
    Transformer, abstract_params, head_kernel, init_fp8_history, init_params, masked_units,
    uses_fp8_history)
