"""Small-scale paper replica: a 16-layer model trained from scratch, and G_stack (a
4-layer model stacked x4 into it) at exactly the same FLOPs. benchmarks/repro.py runs
both and `growjax speedup` on them (docs/RESULTS.md).

  growjax train --config configs/repro/replica.py:run=scratch --workdir runs/repro/scratch
  growjax train --config configs/repro/replica.py:run=stack --workdir runs/repro/stack
  growjax speedup --scratch runs/repro/scratch --grown runs/repro/stack

Args (comma-separated key=value after the colon):
  run          (required) scratch or stack.
  steps        the scratch run's steps (default 900); a stack run spends their FLOPs.
  method       stack only: the depth operator (default stack, G_stack), e.g. zero.
  small_steps  stack only: steps of the small model (default 300), e.g.
               configs/repro/replica.py:run=stack,method=zero,small_steps=300.
  g            stack only: the growth factor; the small model has 16 // g layers
               (default 4: 4L stacked x4; g=2: 8L stacked x2).
  seed         config.seed (default 0): initialisation and data order, e.g.
               configs/repro/replica.py:run=scratch,seed=1.

scratch: a 16L x 512 LLaMA (~50M parameters) on the stdlib + Shakespeare corpus
(`growjax.data.corpora.stdlib_and_plays`, ~35M byte tokens, so the ~59M tokens seen
here are under two passes), 900 steps of 64 x 1024 tokens, one GPU.
stack: same corpus, batch, optimizer and LR schedule. The 4L x 512 base model trains
`small_steps` steps (d = 300 x 65,536 = 19.7M tokens), is grown by G_stack (layer map
[0,1,2,3]*4, optimizer state reset, LR schedule continued over the whole run, as the
paper does), and the 16-layer model trains on until the whole run has spent the scratch
run's FLOPs. (The paper's fit for d gives more tokens than this whole budget at 2.5e16
FLOPs, far outside its fitted range, so d is set by hand to a third of the tokens.)
"""

from ml_collections import config_dict

from growjax.config import base_config, model_config, parse_arg
from growjax.data import corpora
from growjax.growth.budget import equal_flops_steps
from growjax.model import ModelConfig

LARGE = dict(vocab_size=384, num_layers=16, embed_dim=512, num_heads=8, num_kv_heads=8,
             head_dim=64, mlp_dim=1536)
GROWTH_FACTORS = (2, 4)


def get_config(arg=None):
  args = parse_arg(arg, "configs/repro/replica.py", run="", steps=900,
                   method=config_dict.placeholder(str),
                   small_steps=config_dict.placeholder(int),
                   g=config_dict.placeholder(int), seed=0)
  if args.run not in ("scratch", "stack"):
    raise ValueError(f"configs/repro/replica.py: run={args.run!r} is not one of scratch, "
                     f"stack (e.g. configs/repro/replica.py:run=scratch)")
  if args.run == "scratch" and (args.method is not None or args.small_steps is not None
                                or args.g is not None):
    raise ValueError("configs/repro/replica.py: method, small_steps and g are args of "
                     "run=stack only")
  g = 4 if args.g is None else args.g
  if g not in GROWTH_FACTORS:
    raise ValueError(f"configs/repro/replica.py: g={g} is not one of {GROWTH_FACTORS} (the "
                     f"small model has 16 // g layers), e.g. configs/repro/replica.py:run=stack,g=2")
  c = base_config("tiny")
  c.seed = args.seed
  c.model = model_config("tiny", **LARGE)
  corpora.stdlib_and_plays(c.data)
  c.data.seq_len = 1024
  c.train.steps = args.steps
  c.train.global_batch_size = 64
  c.train.loss_chunk_len = 1024
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.eval_batches = 16              # 1M held-out tokens
  c.train.checkpoint_every = 300
  c.optimizer.peak_lr = 1e-3
  c.optimizer.end_lr = 1e-4
  c.optimizer.warmup_steps = 90
  if args.run == "scratch":
    return c
  c.growth.enabled = True
  small = dict(LARGE, num_layers=LARGE["num_layers"] // g)
  c.growth.small_model = model_config("tiny", **small)
  c.growth.small_steps = 300 if args.small_steps is None else args.small_steps
  c.growth.method = args.method or "stack"
  c.train.steps = equal_flops_steps(ModelConfig(**LARGE), ModelConfig(**small),
                                    c.data.seq_len, args.steps, c.growth.small_steps)
  return c
