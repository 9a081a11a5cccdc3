"""A whole grow run on CPU: a 2-layer model trained, stacked x4 (G_stack) to 8 layers,
trained on, on the embedded Shakespeare plays.

  growjax train --config configs/grow_stack_tiny.py --workdir runs/grow_tiny
Arg: the depth operator, e.g. configs/grow_stack_tiny.py:zero.
"""

from growjax.config import base_config, model_config


def get_config(arg=None):
  c = base_config("tiny")
  c.model.dtype = "float32"
  c.model.num_layers = 8
  c.data.seq_len = 128
  c.train.steps = 300
  c.train.global_batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.checkpoint_every = 50
  c.optimizer.peak_lr = 3e-3
  c.optimizer.end_lr = 3e-4
  c.optimizer.warmup_steps = 30
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", dtype="float32", num_layers=2)
  c.growth.small_steps = 100
  c.growth.method = arg or "stack"
  return c
