"""The eight growth operators at a tiny scale, at equal FLOPs (the paper's Table 1 setting,
shrunk): depth x4 (2L -> 8L) and width x2 (128 -> 256 hidden) with direct / zero / random /
learn, against the 8L x 256 model from scratch.

  python benchmarks/repro.py --workdir runs/repro --part operators    # all nine runs + table
  growjax train --config configs/repro/operators.py:depth,zero --workdir runs/op_depth_zero

Arg: `scratch` (the default), or `depth,METHOD` / `width,METHOD` with METHOD one of direct,
zero, random, learn. Depth `direct` is G_stack. Every run spends the FLOPs of 600 scratch
steps.
"""

import math

from growjax.config import base_config, model_config
from growjax.data import corpora
from growjax.model import ModelConfig

LARGE = dict(vocab_size=384, num_layers=8, embed_dim=256, num_heads=4, num_kv_heads=4,
             head_dim=64, mlp_dim=768)
SMALL = {"depth": dict(LARGE, num_layers=2),
         "width": dict(LARGE, embed_dim=128, num_heads=2, num_kv_heads=2, mlp_dim=384)}
SCRATCH_STEPS, SMALL_STEPS = 600, 150


def get_config(arg=None):
  c = base_config("tiny")
  c.model = model_config("tiny", **LARGE)
  corpora.stdlib_and_plays(c.data)
  c.data.seq_len = 256
  c.train.update(steps=SCRATCH_STEPS, global_batch_size=32, loss_chunk_len=256, log_every=25,
                 eval_every=50, eval_batches=16, checkpoint_every=300)
  c.optimizer.update(peak_lr=2e-3, end_lr=2e-4, warmup_steps=60)
  direction, _, method = (arg or "scratch").partition(",")
  if direction == "scratch":
    return c
  if direction not in SMALL or method not in ("direct", "zero", "random", "learn"):
    raise ValueError(f"configs/repro/operators.py arg {arg!r}: use scratch, depth,METHOD or "
                     "width,METHOD with METHOD in direct/zero/random/learn.")
  small = SMALL[direction]
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", **small)
  c.growth.small_steps = SMALL_STEPS
  if direction == "depth":
    c.growth.method = "stack" if method == "direct" else method
  else:
    c.growth.method = "stack"            # same depth: the identity layer map
    c.growth.width_method = method
  seq = c.data.seq_len
  saved = SMALL_STEPS * (ModelConfig(**small).flops_per_token(seq)
                         / ModelConfig(**LARGE).flops_per_token(seq))
  c.train.steps = SMALL_STEPS + math.floor(SCRATCH_STEPS - saved)
  return c
