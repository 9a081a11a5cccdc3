"""Small-scale paper replica: a 16-layer model trained from scratch, and G_stack (a
4-layer model stacked x4 into it) at exactly the same FLOPs. benchmarks/repro.py runs
both and `growjax speedup` on them (docs/RESULTS.md).

  growjax train --config configs/repro/replica.py:run=scratch --workdir runs/repro/scratch
  growjax train --config configs/repro/replica.py:run=stack --workdir runs/repro/stack
  growjax speedup --scratch runs/repro/scratch --grown runs/repro/stack

Args (comma-separated key=value after the colon):
  run          (required) scratch, stack, or late (a 1-layer model trained for `fraction`
               of the steps, expanded once to 16 layers, under WSD: arXiv 2511.04981's
               recipe at this scale; `expand` copy (G_stack of one layer) or zero).
  schedule     cosine (default for scratch and stack) or wsd (warmup-stable-decay, the
               last 20% decayed by 1-sqrt; always wsd for late).
  fraction     late only: the share of the steps the 1-layer model trains (default 0.8).
  expand       late only: copy (default) or zero.
  mup          1: μP with CompleteP depth scaling (growjax/model/mup.py), base shape the
               small model's (late: 1L x 512; stack and scratch: 4L x 512, G_stack's
               small model), so the tuned learning rate is the small model's; default 0.
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
from growjax.growth.budget import equal_flops_steps, late_expansion_steps
from growjax.model import ModelConfig

LARGE = dict(vocab_size=384, num_layers=16, embed_dim=512, num_heads=8, num_kv_heads=8,
             head_dim=64, mlp_dim=1536)
GROWTH_FACTORS = (2, 4)


def get_config(arg=None):
  args = parse_arg(arg, "configs/repro/replica.py", run="", steps=900,
                   method=config_dict.placeholder(str),
                   small_steps=config_dict.placeholder(int),
                   g=config_dict.placeholder(int), seed=0, schedule="cosine",
                   fraction=0.8, expand="copy", mup=0)
  if args.run not in ("scratch", "stack", "late"):
    raise ValueError(f"configs/repro/replica.py: run={args.run!r} is not one of scratch, "
                     f"stack, late (e.g. configs/repro/replica.py:run=scratch)")
  if args.schedule not in ("cosine", "wsd"):
    raise ValueError(f"configs/repro/replica.py: schedule={args.schedule!r} is not one of "
                     f"cosine, wsd (e.g. configs/repro/replica.py:run=scratch,schedule=wsd)")
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
  if args.schedule == "wsd" or args.run == "late":
    c.optimizer.update(schedule="wsd", decay_fraction=0.2, decay_shape="1-sqrt")
  if args.run == "scratch":
    return _mup(c, args, base_layers=4)
  if args.run == "late":
    return _mup(_late(c, args), args, base_layers=1)
  c.growth.enabled = True
  small = dict(LARGE, num_layers=LARGE["num_layers"] // g)
  c.growth.small_model = model_config("tiny", **small)
  c.growth.small_steps = 300 if args.small_steps is None else args.small_steps
  c.growth.method = args.method or "stack"
  c.train.steps = equal_flops_steps(ModelConfig(**LARGE), ModelConfig(**small),
                                    c.data.seq_len, args.steps, c.growth.small_steps)
  return _mup(c, args, base_layers=small["num_layers"])


def _mup(c, args, base_layers):
  """mup=1: every model of the run under μP (CompleteP), base 512 wide x base_layers."""
  if args.mup:
    models = [c.model] + ([c.growth.small_model] if c.growth.get("enabled") else [])
    for m in models:
      m.update(parametrization="mup", mup_base_embed_dim=LARGE["embed_dim"],
               mup_base_num_layers=base_layers, mup_depth_alpha=1.0)
  return c


def _late(c, args):
  """The late single expansion at the scratch run's FLOPs: 1 layer for `fraction` of the
  steps, then 16 (budget.late_expansion_steps), the decay inside the large stage."""
  methods = {"copy": "stack", "zero": "zero"}
  if args.expand not in methods:
    raise ValueError(f"configs/repro/replica.py: expand={args.expand!r} is not one of "
                     f"copy, zero")
  small = dict(LARGE, num_layers=1)
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", **small)
  c.growth.method = methods[args.expand]
  c.growth.small_steps, c.train.steps = late_expansion_steps(
      ModelConfig(**LARGE), ModelConfig(**small), c.data.seq_len, args.steps, args.fraction)
  c.optimizer.decay_fraction = min(0.2, (1 - args.fraction) / 2)
  c.train.eval_every = max(c.train.steps // 18, 1)
  c.train.log_every = 50
  return c
