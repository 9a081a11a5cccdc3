"""Small-scale paper replica: G_stack, a 4-layer model stacked x4 into the 16-layer one.

  growjax train --config configs/repro/stack.py --workdir runs/repro/stack
  growjax speedup --scratch runs/repro/scratch --grown runs/repro/stack

Same corpus, batch, optimizer and LR schedule as configs/repro/scratch.py. The
4L x 512 base model trains `small_steps` steps (d = 300 x 65,536 = 19.7M tokens),
is grown by G_stack (layer map [0,1,2,3]*4, optimizer state reset, LR schedule
continued over the whole run, as the paper does), and the 16-layer model trains
on until the whole run has spent the scratch run's FLOPs. (The paper's fit for d
gives more tokens than this whole budget at 2.5e16 FLOPs, far outside its fitted
range, so d is set by hand to a third of the tokens.)
Arg: `method[,small_steps]`, e.g. `stack`, `zero,300`.
"""

import importlib.util
import math
import os

from growjax.config import model_config
from growjax.model import ModelConfig

_spec = importlib.util.spec_from_file_location(
    "repro_scratch", os.path.join(os.path.dirname(__file__), "scratch.py"))
scratch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scratch)


def equal_flops_steps(large: ModelConfig, small: ModelConfig, seq_len: int,
                      scratch_steps: int, small_steps: int) -> int:
  """Total steps of the grow run whose FLOPs equal `scratch_steps` of the large model."""
  saved = small_steps * small.flops_per_token(seq_len) / large.flops_per_token(seq_len)
  return small_steps + math.floor(scratch_steps - saved)


def get_config(arg=None):
  method, _, small_steps = (arg or "stack").partition(",")
  c = scratch.get_config()
  small = dict(scratch.LARGE, num_layers=scratch.LARGE["num_layers"] // 4)
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", **small)
  c.growth.small_steps = int(small_steps or 300)
  c.growth.method = method
  c.train.steps = equal_flops_steps(ModelConfig(**scratch.LARGE), ModelConfig(**small),
                                    c.data.seq_len, c.train.steps, c.growth.small_steps)
  return c
