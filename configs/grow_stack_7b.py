"""The paper's 7B grow run: the 8-layer x 4096 base (~1.9B, Llama-2-7B widths) stacked
x4 by G_stack into the 32-layer 7B (configs/llama2_7b.py), sequence 2048, bf16, the
authors' optimizer recipe.

The base trains growth.small_steps steps: d ~ 20B tokens, the Du et al. fit for
N = 6.7B and 300B tokens (`growjax plan --params 6.74e9 --tokens 3e11`); then the
7B continues the step count and learning-rate schedule with fresh optimizer
state. Set data (your corpus and tokenizer) and batch for your cluster.
Arg: the global batch size (default 1024 sequences, about 2M tokens, the paper's).
"""

from growjax.config import base_config, model_config


def get_config(arg=None):
  c = base_config("7b")
  c.data.seq_len = 2048
  c.train.global_batch_size = int(arg) if arg else 1024
  c.train.steps = 143_000           # ~300B tokens at 1024 x 2048
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.model.remat_policy = "dots"
  c.growth.enabled = True
  c.growth.small_model = model_config("8l_4096", remat_policy="dots")
  c.growth.small_steps = 9_500      # ~20B tokens at 1024 x 2048
  c.growth.method = "stack"
  return c
