"""The paper's TinyLlama-shaped grow run: 6L x 2048 base stacked x4 (G_stack) to
24L x 2048, sequence 2048, bf16, the authors' optimizer recipe.

The base trains growth.small_steps steps (d tokens = steps x batch x 2048; see
`growjax plan --config configs/grow_stack_paper.py`), then the grown model
continues the step count and learning-rate schedule with fresh optimizer state.
Set data (your corpus and tokenizer) and batch for your cluster.
Arg: the global batch size (default 1024 sequences, about 2M tokens, the paper's).
"""

from growjax.config import base_config, model_config


def get_config(arg=None):
  c = base_config("24l_2048")
  c.data.seq_len = 2048
  c.train.global_batch_size = int(arg) if arg else 1024
  c.train.grad_accum_steps = 1
  c.train.steps = 100_000
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.model.remat_policy = "dots"
  c.growth.enabled = True
  c.growth.small_model = model_config("6l_2048", remat_policy="dots")
  c.growth.small_steps = 5_000      # ~10B tokens at 1024 x 2048, as the paper's base
  c.growth.method = "stack"
  return c
