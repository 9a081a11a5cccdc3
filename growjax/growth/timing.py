"""The paper's growth-timing rule: how many tokens to spend on the small model.

Du et al. fit `log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74`, with N the
target model's parameters and C the compute budget in FLOPs, and found a growth
factor g = 4 best. This module only evaluates that fit; it does not train. Where the
fit's d reaches the budget's own tokens D = C / (6 N) (small budgets), `plan` refuses:
no token would be left for the grown model.
"""

from __future__ import annotations

import math

import ml_collections

RECOMMENDED_G = 4

# Where the fit has support: the paper's runs train targets from 410M to 7B parameters,
# from a 400M model on 10B tokens (~2.5e19 FLOPs) up to a 7B model on 750B tokens
# (~3.2e22 FLOPs) (../shared/PAPER.md). Outside, d is an extrapolation.
FIT_PARAMS = (4.1e8, 7e9)
FIT_FLOPS = (1e19, 3.2e22)


def fit_range_warning(params: float, flops: float) -> str | None:
  """One line when N or C lies outside the range the paper fitted; None inside it."""
  outside = []
  if not FIT_PARAMS[0] <= params <= FIT_PARAMS[1]:
    outside.append(f"N = {params:.3g}")
  if not FIT_FLOPS[0] <= flops <= FIT_FLOPS[1]:
    outside.append(f"C = {flops:.3g}")
  if not outside:
    return None
  return (f"warning: {' and '.join(outside)} {'is' if len(outside) == 1 else 'are'} outside "
          f"the range of the paper's runs (N 410M to 7B parameters, C 1e19 to 3.2e22 "
          f"FLOPs): d is an extrapolation of the fit")


def growth_tokens(params: float, flops: float) -> float:
  """Tokens d to train the small (base) model before growing (the paper's fit)."""
  if params <= 0 or flops <= 1:
    raise ValueError(f"--params and --flops must be positive (got {params}, {flops}).")
  return 10 ** (0.88 * math.log10(params) + 163.27 / math.log10(flops) - 5.74)


def budget_flops(params: float, tokens: float) -> float:
  """C = 6 N D, the usual dense-transformer training cost."""
  return 6.0 * params * tokens


def _up(x: float) -> str:
  """x to 3 significant digits, rounded up: a bound the user can pass as it is printed."""
  step = 10 ** (math.floor(math.log10(x)) - 2)
  return f"{math.ceil(x / step - 1e-9) * step:.3g}"


def check_within_budget(params: float, flops: float, d: float) -> None:
  """Refuses a d at or past the whole budget's tokens D = C / (6 N): the small stage
  alone would use every token the budget buys the target, so there is nothing left to
  train the grown model on and growth cannot pay. The fit extrapolates there (small
  budgets, inside its N range too), so its advice is impossible, not merely poor."""
  tokens = flops / (6.0 * params)
  if d < tokens:
    return
  from growjax.growth import law  # noqa: PLC0415
  least = law.budget_where_d_fits(law.PAPER, params)
  bigger = (f"give a budget above C = {_up(least)} FLOPs (--flops {_up(least)}, or "
            f"--tokens {_up(least / (6.0 * params))}), where d falls below D, "
            if least is not None else "give a larger budget, ")
  raise ValueError(
      f"growth timing d = {d:.4g} tokens is {d / tokens:.3g} times the whole budget's "
      f"D = C/(6N) = {tokens:.4g} tokens (N = {params:.4g}, C = {flops:.4g} FLOPs): the "
      f"small stage alone would take the whole budget, so growth cannot pay — {bigger}or "
      f"train the target from scratch")


def config_tokens(cfg: ml_collections.ConfigDict) -> int:
  """The tokens a run config trains: steps x global batch x sequence length."""
  return int(cfg.train.steps) * int(cfg.train.global_batch_size) * int(cfg.data.seq_len)


def describe(params: float | None, flops: float | None, tokens: float | None = None,
             cfg: ml_collections.ConfigDict | None = None) -> str:
  """The `growjax plan` report: d, g, and what d means in steps of a config (whose own
  N and budget are used where --params / --flops / --tokens are not given)."""
  if params is None and cfg is not None:
    from growjax.model import ModelConfig
    params = float(ModelConfig.from_config(cfg.model).num_params())
  if params is None:
    raise ValueError("give --params N (or --config to take N from its model).")
  if flops is not None and tokens is not None:
    raise ValueError("--flops and --tokens both given — give one (C = 6 N D)")
  if flops is None and tokens is None and cfg is not None:
    tokens = float(config_tokens(cfg))
  if flops is None:
    if tokens is None:
      raise ValueError("give --flops C or --tokens D (then C = 6 N D), or --config to take "
                       "D from its steps x batch x seq_len.")
    flops = budget_flops(params, tokens)
  d = growth_tokens(params, flops)
  check_within_budget(params, flops, d)
  lines = [f"target model N = {params:.4g} parameters, budget C = {flops:.4g} FLOPs",
           f"growth timing d = {d:.4g} tokens on the small model (Du et al. 2024 fit)",
           f"growth factor g = {RECOMMENDED_G} (G_stack; the paper's best)"]
  warning = fit_range_warning(params, flops)
  if warning:
    lines.append(warning)
  if cfg is not None:
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_len
    layers = cfg.model.num_layers
    small_steps = math.ceil(d / tokens_per_step)
    lines.append(f"with this config ({tokens_per_step} tokens/step): small stage = "
                 f"{small_steps} steps; small model "
                 f"{layers / RECOMMENDED_G:g} layers grown to {layers}")
    if small_steps >= cfg.train.steps:
      own = config_tokens(cfg)
      lines.append(
          f"warning: the small stage ({small_steps} steps) is not shorter than this "
          f"config's whole run (config.train.steps={cfg.train.steps}, {own:.4g} tokens): "
          f"the budget above is not this config's — drop --flops/--tokens to plan for the "
          f"config's own budget, or raise config.train.steps above {small_steps}")
  return "\n".join(lines)
