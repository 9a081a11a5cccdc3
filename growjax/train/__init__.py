"""The trainer: what turns a config and a workdir into a trained checkpoint.

`state` (the train state, its mesh and shardings), `optimizer`, `step` (the jitted train
and eval steps), `batches` (host rows -> global arrays), `resume` (where a run starts),
`loop` (`train`: step, report, evaluate, save, stop), `guard` (bad steps and spikes),
`accounting` and `metrics` (tokens/s, MFU, the console and TensorBoard), `mask_ramp`
(MSG growth's masks in training), `attention_choice` (cuDNN packing by compiled memory).
The names other wings call are handed on here (`growjax.train.train(cfg, workdir)`).
"""

from growjax.train.batches import HostBatches, to_global  # noqa: F401 - the trainer's face
from growjax.train.loop import BadStepsError, train  # noqa: F401
from growjax.train.resume import COMPUTE_FIELDS, restore_or_init  # noqa: F401
from growjax.train.step import (  # noqa: F401
    DOCUMENT_KEYS, abstract_state, fast_path_enabled, fp8_ready, loss_fn, make_eval_step,
    make_fp8_calibration, make_train_step, model_batch, single_document_cond,
    single_documents, state_shardings, step_abstract_state)
