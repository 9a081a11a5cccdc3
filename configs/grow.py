"""A whole grow run (`growjax train` with growth.enabled): the small model trains
growth.small_steps steps, is grown into the large one (G_stack x4 unless `method`
says otherwise), and the large model continues the step count and learning-rate
schedule with fresh optimizer state, the paper's recipe.

  growjax train --config configs/grow.py:recipe=tiny --workdir runs/grow_tiny
  growjax train --config configs/grow.py:recipe=gradual --workdir runs/grow_gradual
  growjax train --config configs/grow.py:recipe=late,expand=zero --workdir runs/grow_late

recipe=gradual grows several times in one run (config.growth.events, see
growjax/growth/stages.py): each growth continues the step count, the LR schedule,
the data stream and the FLOPs count, and hands over the Adam state by its event's
OPT_STATE (default growth.opt_state).

Args (comma-separated key=value after the colon):
  recipe  (required) one of
          tiny   on CPU: a 2-layer model stacked into 8 layers on the embedded
                 Shakespeare plays (fp32, sequence 128, batch 16, 300 steps, 100 small).
          paper  the paper's TinyLlama-shaped run: 6l_2048 -> 24l_2048, d = 5,000 steps
                 (~10B tokens, as the paper's base) of 100,000.
          7b     the paper's 7B run: 8l_4096 (~1.9B, Llama-2-7B widths) -> 7b; d = 9,500
                 steps (~20B tokens, the Du et al. fit for N = 6.7B and 300B tokens,
                 `growjax plan --params 6.74e9 --tokens 3e11`) of 143,000 (~300B).
          28b    7b -> 128l_4096 (26.2B, "28B = 4 x 7B"); d = 14,000 steps (~29B tokens,
                 the fit for N = 26.2B and 1T tokens, `growjax plan --params 2.62e10
                 --tokens 1e12`) of 477,000 (~1T); the large model at remat "full"
                 ("dots" needs ~96 GiB per device at 8 devices).
          gradual  on CPU: gradual stacking in one run, the tiny recipe's 2-layer
                 model grown to 4 layers at step 75 and to 8 at step 150
                 (config.growth.events='4@75,8@150'; stages stage_0/ grown_1/
                 stage_1/ grown_2/ stage_2/ in the workdir), 300 steps in all.
          late   on CPU: the late single expansion (arXiv 2511.04981): the tiny recipe's
                 8-layer target reached from a 1-layer model that trains for `fraction`
                 of the run's steps (default 0.8) and is expanded once, by `expand`
                 (copy: G_stack of its one layer; zero: new layers that start as the
                 identity), under warmup-stable-decay (the expansion in the stable
                 phase); the run's FLOPs equal `scratch_steps` (default 300) of the
                 target from scratch, by construction (growjax/growth/budget.py), so
                 the shallow model sees more tokens; with mup=1 under μP.
          upcycle  on CPU: the tiny recipe's model, dense with 4 layers for 100 steps,
                 upcycled into a mixture of `experts` experts (default 8; top-2, each a
                 copy of the MLP, the router from the initialiser: the function is kept;
                 growjax/growth/experts.py) for the rest of the 300 steps; `drop` > 0
                 re-draws that fraction of each expert's units (Drop-Upcycling, r = 0.5
                 in the paper), `depth` > 4 grows it by G_stack in the same growth.
                 The MoE's load-balancing and router z-losses are logged per layer.
          paper, 7b and 28b: sequence 2048, bf16; tokens are at the default batch.
  batch   the global batch in sequences (default 16 for tiny, else 1024, ~2M tokens).
  method  the depth operator (growth.method): stack (default, G_stack), interpolate,
          stack_bottom, stack_middle, stack_top, zero, random, learn; e.g.
          configs/grow.py:recipe=tiny,method=zero. For gradual: every event's default
          (one event's own: --config.growth.events='4@75:zero,8@150:stack:grow').
  mask_ramp  MSG masked growth (growth.mask_ramp_steps): the new layers / units enter
          through a mask ramped 0 -> 1 over this many steps after the growth, so any
          operator starts function-preserving (default 0: off); e.g.
          configs/grow.py:recipe=tiny,method=random,mask_ramp=50.
  experts, drop, depth  upcycle's experts (default 8), Drop-Upcycling fraction
          (growth.drop_fraction, default 0) and large depth (default 4); e.g.
          configs/grow.py:recipe=upcycle,drop=0.5,depth=8.
  mup     1: both models under μP with CompleteP depth scaling
          (config.model.parametrization='mup', growjax/model/mup.py), the base shape the
          small model's, so hyper-parameters tuned on the small model carry to the large
          one and the growth carries the multipliers (growjax/growth/mup_carry.py);
          e.g. configs/grow.py:recipe=late,mup=1. Default 0 (SP; upcycle: SP only).

For paper / 7b / 28b set data (your corpus and tokenizer) and batch for your cluster;
`growjax plan --params N --tokens D --config configs/grow.py:recipe=...` gives the
paper's d for a budget in this config's steps. Per-device memory of both stages and of
the growth at 8-256 devices: benchmarks/RESULTS.md (`benchmarks/memory_plan.py`).
"""

from ml_collections import config_dict

from growjax.config import base_config, model_config, parse_arg
from growjax.growth import budget
from growjax.model import ModelConfig

# recipe: (large preset, its remat, small preset, small steps, train steps); sequence 2048
RECIPES = {
    "paper": ("24l_2048", "dots", "6l_2048", 5_000, 100_000),
    "7b": ("7b", "dots", "8l_4096", 9_500, 143_000),
    "28b": ("128l_4096", "full", "7b", 14_000, 477_000),
}


def tiny(batch):
  c = base_config("tiny")
  c.model.update(dtype="float32", num_layers=8)
  c.data.seq_len = 128
  c.train.update(steps=300, global_batch_size=batch, log_every=25, eval_every=50,
                 checkpoint_every=50)
  c.optimizer.update(peak_lr=3e-3, end_lr=3e-4, warmup_steps=30)
  c.growth.small_model = model_config("tiny", dtype="float32", num_layers=2)
  c.growth.small_steps = 100
  return c


def gradual(batch):
  c = tiny(batch)
  c.growth.small_steps = 0          # the events decide
  c.growth.events = "4@75,8@150"
  return c


def late(batch, fraction, expand, scratch_steps):
  """The late single expansion at the FLOPs of `scratch_steps` of the tiny 8-layer run."""
  c = tiny(batch)
  c.growth.small_model = model_config("tiny", dtype="float32", num_layers=1)
  large, small = (ModelConfig.from_config(m) for m in (c.model, c.growth.small_model))
  small_steps, steps = budget.late_expansion_steps(large, small, c.data.seq_len,
                                                   scratch_steps, fraction)
  c.growth.small_steps = small_steps
  c.train.update(steps=steps, eval_every=max(steps // 8, 1), checkpoint_every=max(steps // 8, 1))
  c.optimizer.update(schedule="wsd", decay_fraction=min(0.2, (1 - fraction) / 2),
                     decay_shape="1-sqrt", warmup_steps=min(30, max(small_steps // 10, 1)))
  methods = {"copy": "stack", "zero": "zero"}
  if expand not in methods:
    raise ValueError(f"configs/grow.py: expand={expand!r} is not one of copy, zero")
  return c, methods[expand]


def upcycle(batch, experts, drop, depth):
  """The tiny recipe's dense model upcycled into a mixture of `experts` experts (top-2,
  each a copy of the MLP; growjax/growth/experts.py), `drop` of each expert's units
  re-drawn (Drop-Upcycling), and grown in depth to `depth` layers (G_stack) at the same
  time: 100 dense steps of 300."""
  c = tiny(batch)
  c.growth.small_model = model_config("tiny", dtype="float32", num_layers=4)
  c.model.update(num_layers=depth, num_experts=experts, experts_per_token=2,
                 expert_mlp_dim=c.model.mlp_dim)
  c.growth.drop_fraction = drop
  return c


def paper_scale(recipe, batch):
  large, remat, small, small_steps, steps = RECIPES[recipe]
  c = base_config(large)
  c.model.remat_policy = remat
  c.data.seq_len = 2048
  c.train.update(steps=steps, global_batch_size=batch, log_every=50, eval_every=2000,
                 checkpoint_every=1000)
  c.growth.small_model = model_config(small, remat_policy="dots")
  c.growth.small_steps = small_steps
  return c


def get_config(arg=None):
  args = parse_arg(arg, "configs/grow.py", recipe="", batch=config_dict.placeholder(int),
                   method="stack", mask_ramp=0, fraction=0.8, expand="copy",
                   scratch_steps=300, mup=0, experts=8, drop=0.0, depth=4)
  method = args.method
  if args.recipe == "late":
    c, method = late(16 if args.batch is None else args.batch, args.fraction, args.expand,
                     args.scratch_steps)
  elif args.recipe == "tiny":
    c = tiny(16 if args.batch is None else args.batch)
  elif args.recipe == "upcycle":
    c = upcycle(16 if args.batch is None else args.batch, args.experts, args.drop,
                args.depth)
  elif args.recipe == "gradual":
    c = gradual(16 if args.batch is None else args.batch)
  elif args.recipe in RECIPES:
    c = paper_scale(args.recipe, 1024 if args.batch is None else args.batch)
  else:
    raise ValueError(f"configs/grow.py: recipe={args.recipe!r} is not one of tiny, gradual, "
                     f"{', '.join(RECIPES)}, late, upcycle (e.g. configs/grow.py:recipe=tiny)")
  c.growth.enabled = True
  c.growth.method = method
  c.growth.mask_ramp_steps = args.mask_ramp
  if args.mup:
    use_mup(c)
  return c


def use_mup(c, alpha=1.0):
  """Both models under μP, the small model's shape the base (the shape tuned at)."""
  small = c.growth.small_model
  for m in (c.model, small):
    m.update(parametrization="mup", mup_base_embed_dim=small.embed_dim,
             mup_base_num_layers=small.num_layers, mup_depth_alpha=alpha)
