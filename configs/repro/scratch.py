"""Small-scale paper replica, baseline: the 16-layer model trained from scratch.

  growjax train --config configs/repro/scratch.py --workdir runs/repro/scratch

A 16L x 512 LLaMA (~50M parameters) on the stdlib + Shakespeare corpus
(`growjax.data.corpora.stdlib_and_plays`, ~35M byte tokens, so the ~59M tokens
seen here are under two passes), 900 steps of 64 x 1024 tokens, one GPU. The
G_stack run (configs/repro/stack.py) spends exactly the same FLOPs.
Arg: the number of steps (default 900).
"""

from growjax.config import base_config, model_config
from growjax.data import corpora

LARGE = dict(vocab_size=384, num_layers=16, embed_dim=512, num_heads=8, num_kv_heads=8,
             head_dim=64, mlp_dim=1536)


def get_config(arg=None):
  c = base_config("tiny")
  c.model = model_config("tiny", **LARGE)
  corpora.stdlib_and_plays(c.data)
  c.data.seq_len = 1024
  c.train.steps = int(arg or 900)
  c.train.global_batch_size = 64
  c.train.loss_chunk_len = 1024
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.eval_batches = 16              # 1M held-out tokens
  c.train.checkpoint_every = 300
  c.optimizer.peak_lr = 1e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 90
  return c
