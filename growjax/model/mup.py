"""μP and depth-μP: how init scales, learning rates and forward multipliers follow a
model's width and depth, so hyper-parameters tuned on a small base model transfer.

`config.model.parametrization='sp'` (standard, the default) changes nothing. Under
'mup' every rule below reads the model's shape against its base shape
(`mup_base_embed_dim`, `mup_base_num_layers`, `mup_base_head_dim`), with the width
multiplier m = embed_dim / mup_base_embed_dim, and at the base shape 'mup' *is* 'sp'
(same init, same learning rates, same function; tested). The class of each
parameter is derived from the parameter table (`growjax.model.params`): a vocab-sized
table that writes the stream is the input embedding, one that reads it is the
output head, a norm scale scales it, and every other matrix is hidden.

Width (μP for Adam, Yang et al. 2022 "Tensor Programs V", Table 3, in the
multiplier form of the Cerebras/EleutherAI practitioner's guide, 2024):
- hidden matrices: init std sigma / sqrt(m), Adam learning rate eta / m;
- embedding, output head and norms: init and learning rate of the base;
- output logits multiplied by 1 / m (so the head's effective init and update shrink
  as 1 / fan_in);
- attention logits q.k * sqrt(h0) / h (1 / head_dim at scale, 1 / sqrt(h0) at base
  head_dim h0).
One multiplier m for every hidden matrix: growjax grows the stream, heads and MLP
together, so the fan-in ratios of q/k/v/gate/up (embed) and o/down (heads x head_dim,
mlp) are taken as one.

Depth (`mup_depth_alpha`, with L0 = mup_base_num_layers):
- every residual branch (attention and MLP output) multiplied by (L0 / L)^alpha;
- hidden Adam learning rates multiplied by (L0 / L)^(1 - alpha), for alpha > 0;
- block output projections (o, down) initialised at sigma / sqrt(2 L0) (the base
  depth's), where SP uses sigma / sqrt(2 L): the depth scaling lives in the
  multiplier instead.
alpha = 0.5 is Depth-μP (Yang et al. 2023 "Tensor Programs VI"; Bordelon et al. 2023:
branches 1/sqrt(L), Adam learning rate 1/sqrt(L)); alpha = 1 is CompleteP (Dey et al.
2025: branches 1/L, learning rate constant in depth), under which k copies of a layer
together write what the layer wrote, so a stacked model is a finer step of the small
one (`growjax.growth.operators` on what each operator does to the multipliers);
alpha = 0: width-only μP, SP's depth rules. Left out: CompleteP's depth scaling of
AdamW epsilon and of norm learning rates, and μP's weight-decay correction (decay
is scaled with each parameter's learning rate, as AdamW param groups do).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from growjax.model.params import (
  AXIS_FIELDS,
  INIT_ONES,
  INIT_OUT,
  LAYERS,
  PARAMS,
  OUTPUT,
  SCALES,
  VOCAB,
  WRITES,
  Param,
)

PARAMETRIZATIONS = ("sp", "mup")
DEPTH_ALPHAS = (0.0, 0.5, 1.0)
# Parameter classes, derived from the table (`param_class`).
HIDDEN, INPUT_TABLE, OUTPUT_TABLE, NORM = "hidden", "input_table", "output_table", "norm"


def is_mup(cfg) -> bool:
  return getattr(cfg, "parametrization", "sp") == "mup"


def param_class(p: Param) -> str:
  """A parameter's μP class from its declaration: axes and residual-stream role."""
  if p.role in (SCALES, OUTPUT):   # norm scales; a family's q/k/v biases and q/k norms
    return NORM
  if VOCAB in p.axes:
    return INPUT_TABLE if p.role == WRITES else OUTPUT_TABLE
  return HIDDEN


def width_multiplier(cfg) -> float:
  """m = embed_dim / mup_base_embed_dim under μP, else 1."""
  return cfg.embed_dim / cfg.mup_base_embed_dim if is_mup(cfg) else 1.0


def branch_multiplier(cfg) -> float:
  """What each residual branch's output is multiplied by: (L0 / L)^alpha (1 under SP)."""
  if not is_mup(cfg) or not cfg.mup_depth_alpha:
    return 1.0
  return (cfg.mup_base_num_layers / cfg.num_layers) ** cfg.mup_depth_alpha


def logit_multiplier(cfg) -> float:
  """What the output logits are multiplied by: 1 / m (1 under SP)."""
  return 1.0 / width_multiplier(cfg)


def query_multiplier(cfg) -> float:
  """What q is multiplied by before attention's own 1/sqrt(head_dim), so the logits
  scale as sqrt(h0) / head_dim under μP: sqrt(h0 / head_dim) (1 under SP)."""
  if not is_mup(cfg):
    return 1.0
  return math.sqrt(base_head_dim(cfg) / cfg.head_dim)


def base_head_dim(cfg) -> int:
  return cfg.mup_base_head_dim or cfg.head_dim


def init_std(p: Param, cfg) -> float:
  """The normal initialiser's std of a matrix or table `p` (norms start at ones)."""
  if p.init == INIT_ONES:
    raise ValueError("init_std: a norm scale starts at ones, it has no std")
  if not is_mup(cfg):
    depth = 2 * cfg.num_layers if p.init == INIT_OUT else 1
    return cfg.init_std / math.sqrt(depth)
  std = cfg.init_std
  if param_class(p) == HIDDEN:
    std /= math.sqrt(width_multiplier(cfg))
  if p.init == INIT_OUT:
    depth = cfg.mup_base_num_layers if cfg.mup_depth_alpha else cfg.num_layers
    std /= math.sqrt(2 * depth)
  return std


def lr_multiplier(p: Param, cfg) -> float:
  """What the schedule's learning rate is multiplied by for `p` (1 under SP)."""
  if not is_mup(cfg) or param_class(p) != HIDDEN:
    return 1.0
  lr = 1.0 / width_multiplier(cfg)
  if cfg.mup_depth_alpha:
    lr *= (cfg.mup_base_num_layers / cfg.num_layers) ** (1.0 - cfg.mup_depth_alpha)
  return lr


def check(cfg, where: str = "config.model") -> None:
  """One-line refusals of a parametrization that cannot be built."""
  par = getattr(cfg, "parametrization", "sp")
  if par not in PARAMETRIZATIONS:
    raise ValueError(f"{where}.parametrization={par!r} — choose 'sp' (standard) or 'mup'")
  if par != "mup":
    return
  if cfg.mup_base_embed_dim <= 0:
    raise ValueError(f"{where}.mup_base_embed_dim={cfg.mup_base_embed_dim} under "
                     f"parametrization='mup' — set the width the hyper-parameters were tuned "
                     f"at (e.g. {where}.mup_base_embed_dim={cfg.embed_dim})")
  if cfg.mup_depth_alpha not in DEPTH_ALPHAS:
    raise ValueError(f"{where}.mup_depth_alpha={cfg.mup_depth_alpha} — choose 0 (width-only "
                     f"μP), 0.5 (Depth-μP) or 1 (CompleteP)")
  if cfg.mup_depth_alpha and cfg.mup_base_num_layers <= 0:
    raise ValueError(f"{where}.mup_base_num_layers={cfg.mup_base_num_layers} with "
                     f"mup_depth_alpha={cfg.mup_depth_alpha} — set the depth the "
                     f"hyper-parameters were tuned at (e.g. {where}.mup_base_num_layers="
                     f"{cfg.num_layers}), or mup_depth_alpha=0")
  if cfg.mup_base_head_dim < 0:
    raise ValueError(f"{where}.mup_base_head_dim={cfg.mup_base_head_dim} — set a positive "
                     f"head size, or 0 for this model's head_dim")


def fold_into_sp(params: dict, cfg) -> dict:
  """The same function as plain SP weights (for export): the logit multiplier folded
  into the head, the branch multiplier into each block's output projections and the
  query multiplier into q. Under SP, `params` unchanged. Tied embeddings under μP
  cannot be folded (the table is both input and head): refused."""
  if not is_mup(cfg):
    return params
  if cfg.tie_embeddings:
    raise ValueError("a μP model with tie_embeddings=True cannot be written as plain "
                     "weights: its head is its embedding times 1/m — export is for untied μP "
                     "models")
  out = dict(params)
  out["lm_head"] = params["lm_head"] * logit_multiplier(cfg)
  layers = {k: dict(v) for k, v in params["layers"].items()}
  b = branch_multiplier(cfg)
  attn = layers["attn"] = dict(layers["attn"])
  if getattr(cfg, "norm_position", "pre") == "post":   # x + b norm(...): into the norms
    for norm in ("attn_norm", "mlp_norm"):
      layers[norm] = {"scale": layers[norm]["scale"] * b}
  else:
    attn["o"] = attn["o"] * b
    for ffn, writers in (("mlp", ("down",)), ("moe", ("down", "shared_down"))):
      if ffn in layers:   # the MLP, or a mixture of experts and its shared expert
        layers[ffn] = {k: v * b if k in writers else v for k, v in layers[ffn].items()}
  qm = query_multiplier(cfg)
  qk_norm = getattr(cfg, "qk_norm", "none")
  if qk_norm != "none":   # the multiplier acts after the q norm: into its scale
    name = "q_norm" if qk_norm == "head" else "q_whole_norm"
    attn[name] = {"scale": attn[name]["scale"] * qm}
  else:
    attn["q"] = attn["q"] * qm
    if "q_bias" in attn:
      attn["q_bias"] = attn["q_bias"] * qm
  out["layers"] = layers
  return out


__all__ = [
  "DEPTH_ALPHAS",
  "PARAMETRIZATIONS",
  "branch_multiplier",
  "check",
  "fold_into_sp",
  "init_std",
  "logit_multiplier",
  "lr_multiplier",
  "make_param",
  "param_class",
  "query_multiplier",
  "width_multiplier",
]
