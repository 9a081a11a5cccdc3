"""A 7B (Llama-2-7B shapes) stacked x4 by G_stack into 128 layers x 4096 (26.2B
parameters: the "28B = 4 x 7B" growth), sequence 2048, bf16, the paper's recipe.

The 7B trains growth.small_steps steps: d ~ 29B tokens, the Du et al. fit for
N = 26.2B and 1T tokens (`growjax plan --params 2.62e10 --tokens 1e12`); then the
large model continues the step count and schedule with fresh optimizer state.
Per-device memory of both stages and of the growth at 8-256 devices is in
benchmarks/RESULTS.md (`benchmarks/memory_plan.py`).
Arg: the global batch size (default 1024 sequences, about 2M tokens).
"""

from growjax.config import base_config, model_config


def get_config(arg=None):
  c = base_config("128l_4096")
  c.data.seq_len = 2048
  c.train.global_batch_size = int(arg) if arg else 1024
  c.train.steps = 477_000           # ~1T tokens at 1024 x 2048
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.model.remat_policy = "full"     # "dots" needs ~96 GiB per device at 8 devices
  c.growth.enabled = True
  c.growth.small_model = model_config("7b", remat_policy="dots")
  c.growth.small_steps = 14_000     # ~29B tokens at 1024 x 2048
  c.growth.method = "stack"
  return c
