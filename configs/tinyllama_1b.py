"""The 1b LLaMA model (see growjax.config.MODEL_PRESETS), sequence 2048, bf16.

The paper's recipe (AdamW 0.9/0.95, wd 0.1, clip 1.0, 3e-4 cosine to 3e-5, 3000
warmup steps). Set the data (e.g. --config.data.name=text_files and
--config.data.tokenizer=spm:PATH) and the global batch for your cluster.
Arg: an optional global batch size, e.g. configs/tinyllama_1b.py:64.
"""

from growjax.config import base_config


def get_config(arg=None):
  c = base_config("1b")
  c.data.seq_len = 2048
  c.train.global_batch_size = int(arg) if arg else 24
  c.train.steps = 100_000
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.model.remat_policy = "dots"
  return c
