"""The paper's d and g study at the small replica scale: the target is the 8L x 256 model
of configs/repro/operators.py (600 steps of 32 x 256 tokens on the stdlib + plays corpus),
swept over the growth timing d in {50, 150, 300} small-stage steps and the growth factor g
in {2, 4} (4L and 2L small models), G_stack, every grow run at the scratch run's FLOPs.

  growjax sweep --config configs/repro/sweep.py --workdir runs/sweep --d 50,150,300 --g 2,4
  growjax sweep --config configs/repro/sweep.py --workdir runs/sweep --d 50,150,300 --g 2,4 \\
      --dry_run        # the grid, each run's steps and FLOPs, no compute

Seven runs (scratch + 3 d x 2 g): 4,816 steps in all (1,000 of them small-stage),
1.64e15 FLOPs (7 x the scratch run's 2.35e14; `--dry_run` prints the table); one GPU,
minutes. The summary (runs/sweep/sweep_summary.json) and the plots (loss_vs_flops.png,
saving_vs_d.png, saving_vs_g.png) land in the workdir; a rerun skips finished runs.

Arg: `method=M` sweeps another depth operator (e.g. method=zero); `steps=N` another scratch
length (d must stay below it).
"""

import importlib.util
import os

from growjax.config import parse_arg

# The target and its training recipe are operators.py's scratch run (loaded by path: a
# config file is not a package module).
_SPEC = importlib.util.spec_from_file_location(
    "configs_repro_operators", os.path.join(os.path.dirname(__file__), "operators.py"))
operators = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(operators)


def get_config(arg=None):
  args = parse_arg(arg, "configs/repro/sweep.py", method="stack",
                   steps=operators.SCRATCH_STEPS)
  c = operators.get_config("scratch")
  c.train.steps = args.steps
  c.train.checkpoint_every = 150        # the resume points of a sweep run; each save costs
  c.growth.method = args.method         # the operator `growjax sweep` uses (--methods: more)
  return c
