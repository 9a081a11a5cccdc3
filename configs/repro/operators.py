"""The growth operators at a tiny scale, at equal FLOPs (the paper's Table 1 setting,
shrunk): depth x4 (2L -> 8L) and width x2 (128 -> 256 hidden) with direct / zero /
random / learn, width `split` (direct with zero-sum noise on the copies), and the depth
presets llama_pro / solar / middle, against the 8L x 256 model from scratch.

  python benchmarks/repro.py --workdir runs/repro --part operators    # every run + table
  python benchmarks/repro.py --workdir runs/repro --part operators --runs scratch,width,split
  growjax train --config configs/repro/operators.py:depth,zero --workdir runs/op_depth_zero

Arg: `scratch` (the default), `depth,METHOD` with METHOD one of direct (G_stack), zero,
random, learn, llama_pro, solar, middle, or `width,METHOD` with METHOD one of direct,
split, zero, random, learn. A `,msg` suffix (e.g. `depth,direct,msg`) lets the new
layers / units in through a mask ramped over MSG_RAMP_STEPS steps
(`config.growth.mask_ramp_steps`, MSG-style masked growth; refused while this checkout's
config has no such field). A last `,small=N` suffix trains the small model N steps
instead of SMALL_STEPS (150) before growth, at the same total FLOPs: the growth timing d
of one operator, e.g. `width,random,msg,small=300`.

The depth presets cannot all start from 2 layers: 2 -> 8 is not a llama_pro expansion
(it inserts L' - L = 6 layers one after every L/6 small layers), solar reaches at most
2L = 4 layers from 2, and middle of L < 4 layers is plain stack. So they grow into the
same 8L x 256 model from the smallest source each one fits (PRESET_SMALL_LAYERS):
llama_pro 4 -> 8 (one zero-writer copy after every layer: [0,0',1,1',2,2',3,3']),
solar 5 -> 8 (m = 1 layer dropped at the seam: [0,1,2,3] + [1,2,3,4]) and middle
4 -> 8 (MIDAS: [0, 1,2, 1,2, 1,2, 3]). Every run trains its small model
SMALL_STEPS steps and spends the FLOPs of SCRATCH_STEPS scratch steps in all: a deeper
source spends more of them before growth, so it has fewer large steps after.
"""

from growjax.config import base_config, model_config
from growjax.data import corpora
from growjax.growth.budget import equal_flops_steps
from growjax.model import ModelConfig

LARGE = dict(vocab_size=384, num_layers=8, embed_dim=256, num_heads=4, num_kv_heads=4,
             head_dim=64, mlp_dim=768)
SMALL = {"depth": dict(LARGE, num_layers=2),
         "width": dict(LARGE, embed_dim=128, num_heads=2, num_kv_heads=2, mlp_dim=384)}
SCRATCH_STEPS, SMALL_STEPS = 600, 150
DEPTH_METHODS = ("direct", "zero", "random", "learn", "llama_pro", "solar", "middle")
WIDTH_METHODS = ("direct", "split", "zero", "random", "learn")
PRESET_SMALL_LAYERS = {"llama_pro": 4, "solar": 5, "middle": 4}
MSG_RAMP_STEPS = 50


def runs() -> list[str]:
  """Every arg this config takes (without the `,msg` variants)."""
  return (["scratch"] + [f"depth,{m}" for m in DEPTH_METHODS]
          + [f"width,{m}" for m in WIDTH_METHODS])


def get_config(arg=None):
  c = base_config("tiny")
  c.model = model_config("tiny", **LARGE)
  corpora.stdlib_and_plays(c.data)
  c.data.seq_len = 256
  c.train.update(steps=SCRATCH_STEPS, global_batch_size=32, loss_chunk_len=256, log_every=25,
                 eval_every=50, eval_batches=16, checkpoint_every=300)
  c.optimizer.update(peak_lr=2e-3, end_lr=2e-4, warmup_steps=60)
  direction, method, *suffix = (arg or "scratch").split(",") + [""]
  suffix = [s for s in suffix if s]
  small_steps = SMALL_STEPS
  if suffix and suffix[-1].startswith("small="):
    small_steps = _small_steps(arg, suffix.pop()[len("small="):])
  if direction == "scratch" and not method and not suffix and small_steps == SMALL_STEPS:
    return c
  methods = {"depth": DEPTH_METHODS, "width": WIDTH_METHODS}.get(direction, ())
  if method not in methods or suffix not in ([], ["msg"]):
    raise ValueError(f"configs/repro/operators.py arg {arg!r} is not a run — use scratch, "
                     f"depth,METHOD with METHOD in {'/'.join(DEPTH_METHODS)} or width,METHOD "
                     f"with METHOD in {'/'.join(WIDTH_METHODS)}, optionally with ,msg "
                     f"and then ,small=N")
  small = dict(SMALL[direction])
  if method in PRESET_SMALL_LAYERS:
    small["num_layers"] = PRESET_SMALL_LAYERS[method]
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", **small)
  c.growth.small_steps = small_steps
  if direction == "depth":
    c.growth.method = "stack" if method == "direct" else method
  else:
    c.growth.method = "stack"            # same depth: the identity layer map
    c.growth.width_method = method
  if suffix == ["msg"]:
    if "mask_ramp_steps" not in c.growth:
      raise ValueError(f"configs/repro/operators.py arg {arg!r}: ,msg needs "
                       f"config.growth.mask_ramp_steps (masked growth), which this checkout "
                       f"does not have — drop ,msg")
    c.growth.mask_ramp_steps = MSG_RAMP_STEPS
  c.train.steps = equal_flops_steps(ModelConfig(**LARGE), ModelConfig(**small),
                                    c.data.seq_len, SCRATCH_STEPS, small_steps)
  return c


def _small_steps(arg: str, value: str) -> int:
  """The `,small=N` suffix: small-stage steps, leaving the large model at least one step
  of the scratch run's FLOPs."""
  try:
    n = int(value)
  except ValueError:
    n = 0
  if not 1 <= n < SCRATCH_STEPS:
    raise ValueError(f"configs/repro/operators.py arg {arg!r}: small={value!r} is not a "
                     f"number of small-stage steps — give 1 <= N < {SCRATCH_STEPS}, e.g. "
                     f"width,random,msg,small=300")
  return n
