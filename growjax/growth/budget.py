"""Equal FLOPs: how many target-model steps a grow run takes after its small stage so
that the whole run spends what the scratch run spends.

Every comparison of growth against scratch (the repro configs, `growjax sweep`) is made
at this one budget, so the rule lives once, here. Its home is its own module rather than
`timing`: `timing` evaluates the paper's fit for d (how long to train the small model),
this is the accounting that turns a chosen d into step counts; it needs FLOPs per step,
not the law.
"""

from __future__ import annotations

import math

from growjax.model import ModelConfig


def large_steps(scratch_steps: int, large_step_flops: float, small_steps: int,
                small_step_flops: float) -> int:
  """Steps of the target model left of `scratch_steps` of its own FLOPs once
  `small_steps` small-stage steps are spent (step FLOPs, or FLOPs per token where both
  stages take the same batch); below 1 when the small stage takes the whole budget."""
  budget = scratch_steps * large_step_flops
  return math.floor((budget - small_steps * small_step_flops) / large_step_flops)


def largest_small_steps(scratch_steps: int, large_step_flops: float,
                        small_step_flops: float) -> int:
  """The most small-stage steps that leave the target model at least one step."""
  budget = scratch_steps * large_step_flops
  most = math.floor((budget - large_step_flops) / small_step_flops)
  while most > 0 and large_steps(scratch_steps, large_step_flops, most,
                                 small_step_flops) < 1:      # float rounding at the edge
    most -= 1
  return most


def equal_flops_steps(large: ModelConfig, small: ModelConfig, seq_len: int,
                      scratch_steps: int, small_steps: int) -> int:
  """config.train.steps of a grow run (small stage + large stage) whose FLOPs equal
  `scratch_steps` of the large model, both stages at the same batch."""
  return small_steps + large_steps(scratch_steps, large.flops_per_token(seq_len),
                                   small_steps, small.flops_per_token(seq_len))


def late_expansion_steps(large: ModelConfig, small: ModelConfig, seq_len: int,
                         scratch_steps: int, fraction: float) -> tuple[int, int]:
  """(small-stage steps, config.train.steps) of a run that trains `small` for `fraction`
  of its steps and the large model for the rest, at the FLOPs of `scratch_steps` of the
  large model (both stages at the same batch): the late, single expansion of arXiv
  2511.04981, where a shallow model sees most of the tokens. With r = small/large FLOPs
  per token, s = fraction * S / (1 - fraction + fraction * r) small steps leave the
  large model the rest of the budget (`equal_flops_steps`, rounded down)."""
  if not 0 < fraction < 1:
    raise ValueError(f"the expansion fraction={fraction} must be in (0, 1) — e.g. 0.8")
  f_large, f_small = large.flops_per_token(seq_len), small.flops_per_token(seq_len)
  aim = int(fraction * scratch_steps / (1 - fraction + fraction * f_small / f_large))
  most = largest_small_steps(scratch_steps, f_large, f_small)

  def unspent(s):   # the budget left over after the whole large steps, in large steps
    return scratch_steps - (s * f_small / f_large) - large_steps(scratch_steps, f_large, s,
                                                                 f_small)

  # Of the small-stage lengths near the aim, the one that leaves the least of the budget
  # unspent (whole large steps round it down), so the FLOPs match scratch's closely.
  slack = max(3, aim // 20)
  near = range(max(1, aim - slack), min(most, aim + slack) + 1)
  small_steps = min(near, key=lambda s: (round(unspent(s), 9), abs(s - aim)), default=most)
  return small_steps, equal_flops_steps(large, small, seq_len, scratch_steps, small_steps)
