"""The 7b LLaMA model (Llama-2-7B shapes, see growjax.config.MODEL_PRESETS), sequence
2048, bf16, trained from scratch: the paper's 7B baseline (and `growjax grow --config`
target for its 8-layer base, configs/grow_stack_7b.py).

The paper's recipe (AdamW 0.9/0.95, wd 0.1, clip 1.0, 3e-4 cosine to 3e-5, 3000
warmup steps), ~300B tokens at 1024 x 2048. Set the data (e.g.
--config.data.name=text_files and --config.data.tokenizer=spm:PATH) and the global
batch for your cluster; per-device memory at 8-256 devices is in
benchmarks/RESULTS.md (`benchmarks/memory_plan.py`).
Arg: an optional global batch size, e.g. configs/llama2_7b.py:256.
"""

from growjax.config import base_config


def get_config(arg=None):
  c = base_config("7b")
  c.data.seq_len = 2048
  c.train.global_batch_size = int(arg) if arg else 1024
  c.train.steps = 143_000           # ~300B tokens at 1024 x 2048
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.model.remat_policy = "dots"
  return c
