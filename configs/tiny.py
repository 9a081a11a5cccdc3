"""Tiny LLaMA on the embedded Shakespeare plays (byte tokenizer): the CPU default.

A few minutes on 2 CPU cores. `growjax train --config configs/tiny.py`
"""

from growjax.config import base_config


def get_config(arg=None):
  c = base_config("tiny")
  c.model.dtype = "float32"          # CPUs have no fast bf16 matmul
  c.data.seq_len = 128
  c.train.steps = 400
  c.train.global_batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 100
  c.optimizer.peak_lr = 3e-3
  c.optimizer.end_lr = 3e-4
  c.optimizer.warmup_steps = 40
  c.train.final_sample_tokens = 64   # the run ends by printing what the model writes
  c.train.final_sample_prompt = ""   # from the start of a document: right for any corpus
  return c
