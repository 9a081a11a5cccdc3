"""The parameter table: every parameter declared once, in `PARAMS`.

Each entry gives a parameter's path, its logical axes, the role it plays for the residual
stream (reads, writes or scales it), its weight-decay class and its initialiser. The
modules create their parameters from it (`growjax.model.create.make_param`: shape from
`AXIS_FIELDS`, the one
axis -> config field table), and everything else reads it: sharding (`growjax.sharding`),
growth (`growjax.growth`) and the weight-decay mask (`growjax.train.optimizer`). Kept apart
from the modules so that those readers need no flax module to know a parameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

# Logical axis names of parameters, and the config field that sizes each.
VOCAB, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, LAYERS = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers")
AXIS_FIELDS = {VOCAB: "vocab_size", EMBED: "embed_dim", MLP: "mlp_dim", HEADS: "num_heads",
               KV_HEADS: "num_kv_heads", HEAD_DIM: "head_dim", LAYERS: "num_layers"}
# A mixture of experts' axes (`growjax.model.moe`): the experts, each expert's hidden units,
# and the always-on shared expert's. Sized only in an MoE model (`MOE_AXES`).
EXPERTS, EXPERT_MLP, SHARED_MLP = "experts", "expert_mlp", "shared_mlp"
AXIS_FIELDS.update({EXPERTS: "num_experts", EXPERT_MLP: "expert_mlp_dim",
                    SHARED_MLP: "shared_mlp_dim"})
MOE_AXES = (EXPERTS, EXPERT_MLP, SHARED_MLP)
# Logical axis names of activations (sharding constraints only).
ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
    "act_vocab")

# What a parameter does to the residual stream. A weight that READS it contracts the
# stream axis `embed` (its first axis: `x @ W`); one that WRITES it produces `embed`
# (its last axis) from its other axes; a norm SCALES it (its only axis is `embed`).
READS, WRITES, SCALES = "reads", "writes", "scales"
# A parameter of a projection's output (a q/k/v bias, a q/k norm scale): no `embed` axis;
# its axes are its projection's outputs, so growth copies it with its units, undivided.
OUTPUT = "output"
ROLE_RULES = {
    READS: f"a weight that reads the residual stream contracts '{EMBED}', its first axis "
           f"(x @ W); its other axes are outputs",
    WRITES: f"a weight that writes the residual stream produces '{EMBED}', its last axis, "
            f"from its other axes",
    SCALES: f"a norm scale has the one axis '{EMBED}'",
    OUTPUT: f"a parameter of a projection's output has no '{EMBED}' axis",
}
# Weight-decay classes (`growjax.train.optimizer.decay_mask`): matrices are always decayed;
# vocab-sized tables and norm scales as config.optimizer.decay_embeddings / decay_norms say.
DECAY_MATRIX, DECAY_TABLE, DECAY_NORM = "matrix", "table", "norm"
# Initialisers: normal(init_std); normal(init_std / sqrt(2 num_layers)) for the output
# projections of a block; ones.
INIT_STD, INIT_OUT, INIT_ONES, INIT_ZEROS = "std", "out", "ones", "zeros"


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter's declaration: `axes` (logical names, `layers` first for the
  scanned per-layer parameters), `role` for the residual stream, weight-decay class
  `decay`, initialiser `init`."""
  axes: tuple[str, ...]
  role: str
  decay: str
  init: str
  # The model family it belongs to: a `ModelConfig` predicate (`FAMILY_PARAMS`) that
  # must hold for the parameter to exist; None: every model has it.
  family: str | None = None


_LAYER_PARAMS = {
    "attn_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "attn/q": Param((EMBED, HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/k": Param((EMBED, KV_HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/v": Param((EMBED, KV_HEADS, HEAD_DIM), READS, DECAY_MATRIX, INIT_STD),
    "attn/o": Param((HEADS, HEAD_DIM, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
    "mlp_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "mlp/gate": Param((EMBED, MLP), READS, DECAY_MATRIX, INIT_STD),
    "mlp/up": Param((EMBED, MLP), READS, DECAY_MATRIX, INIT_STD),
    "mlp/down": Param((MLP, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
    # An MoE block in place of `mlp` (num_experts > 0; `growjax.model.moe`): the router
    # reads the stream into one logit per expert; the experts' SwiGLUs stacked on
    # `experts`; the shared expert (shared_mlp_dim > 0) a SwiGLU every token takes.
    "moe/router": Param((EMBED, EXPERTS), READS, DECAY_MATRIX, INIT_STD),
    "moe/gate": Param((EMBED, EXPERTS, EXPERT_MLP), READS, DECAY_MATRIX, INIT_STD),
    "moe/up": Param((EMBED, EXPERTS, EXPERT_MLP), READS, DECAY_MATRIX, INIT_STD),
    "moe/down": Param((EXPERTS, EXPERT_MLP, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
    "moe/shared_gate": Param((EMBED, SHARED_MLP), READS, DECAY_MATRIX, INIT_STD),
    "moe/shared_up": Param((EMBED, SHARED_MLP), READS, DECAY_MATRIX, INIT_STD),
    "moe/shared_down": Param((SHARED_MLP, EMBED), WRITES, DECAY_MATRIX, INIT_OUT),
    # Model families (`FAMILY_PARAMS`). Qwen2: q/k/v biases (not decayed, as norms).
    "attn/q_bias": Param((HEADS, HEAD_DIM), OUTPUT, DECAY_NORM, INIT_ZEROS, "qkv_bias"),
    "attn/k_bias": Param((KV_HEADS, HEAD_DIM), OUTPUT, DECAY_NORM, INIT_ZEROS, "qkv_bias"),
    "attn/v_bias": Param((KV_HEADS, HEAD_DIM), OUTPUT, DECAY_NORM, INIT_ZEROS, "qkv_bias"),
    # Qwen3: an RMSNorm over each head's q and k (one scale per head_dim feature).
    "attn/q_norm/scale": Param((HEAD_DIM,), OUTPUT, DECAY_NORM, INIT_ONES, "qk_norm_head"),
    "attn/k_norm/scale": Param((HEAD_DIM,), OUTPUT, DECAY_NORM, INIT_ONES, "qk_norm_head"),
    # OLMo-2: an RMSNorm over the whole q and k projections (all heads at once).
    "attn/q_whole_norm/scale": Param((HEADS, HEAD_DIM), OUTPUT, DECAY_NORM, INIT_ONES,
                                     "qk_norm_whole"),
    "attn/k_whole_norm/scale": Param((KV_HEADS, HEAD_DIM), OUTPUT, DECAY_NORM, INIT_ONES,
                                     "qk_norm_whole"),
}
# Which families a `ModelConfig` has (`Param.family`): its parameters exist only there.
FAMILY_PARAMS = {
    "qkv_bias": lambda cfg: bool(getattr(cfg, "qkv_bias", False)),
    "qk_norm_head": lambda cfg: getattr(cfg, "qk_norm", "none") == "head",
    "qk_norm_whole": lambda cfg: getattr(cfg, "qk_norm", "none") == "whole",
}
# Every parameter, by its path in the params tree. `lm_head` is absent when the
# embeddings are tied (the embedding table, transposed, is the head).
PARAMS: dict[str, Param] = {
    "embedding": Param((VOCAB, EMBED), WRITES, DECAY_TABLE, INIT_STD),
    **{f"{LAYERS}/{k}": dataclasses.replace(p, axes=(LAYERS,) + p.axes)
       for k, p in _LAYER_PARAMS.items()},
    "final_norm/scale": Param((EMBED,), SCALES, DECAY_NORM, INIT_ONES),
    "lm_head": Param((EMBED, VOCAB), READS, DECAY_TABLE, INIT_STD),
}


def check_params(table: dict[str, Param]) -> None:
  """Refuses a declaration whose axes, role, decay class or initialiser disagree."""
  for path, p in table.items():
    where = f"growjax.model.PARAMS[{path!r}]"
    unknown = [a for a in p.axes if a not in AXIS_FIELDS]
    if unknown or len(set(p.axes)) != len(p.axes):
      raise ValueError(f"{where} declares axes {p.axes} — use each of {tuple(AXIS_FIELDS)} "
                       f"at most once")
    scanned = path.startswith(LAYERS + "/")
    if scanned != (p.axes[:1] == (LAYERS,)) or LAYERS in p.axes[1:]:
      raise ValueError(f"{where} declares axes {p.axes} — a parameter under '{LAYERS}/' "
                       f"(the scanned blocks) has '{LAYERS}' as its first axis, others none")
    rest = p.axes[1:] if scanned else p.axes
    fits = {SCALES: rest == (EMBED,), OUTPUT: EMBED not in rest and len(rest) >= 1,
            READS: len(rest) >= 2 and rest[0] == EMBED and EMBED not in rest[1:],
            WRITES: len(rest) >= 2 and rest[-1] == EMBED and EMBED not in rest[:-1]}
    if p.role not in fits:
      raise ValueError(f"{where} declares role {p.role!r} — choose one of {tuple(fits)}")
    if not fits[p.role]:
      raise ValueError(f"{where} declares role {p.role!r} with axes {p.axes}, but "
                       f"{ROLE_RULES[p.role]} — fix the axes (and the module's einsum) or "
                       f"the role")
    if p.decay not in (DECAY_MATRIX, DECAY_TABLE, DECAY_NORM):
      raise ValueError(f"{where} declares decay class {p.decay!r} — choose "
                       f"{DECAY_MATRIX!r}, {DECAY_TABLE!r} or {DECAY_NORM!r}")
    if p.init not in (INIT_STD, INIT_OUT, INIT_ONES, INIT_ZEROS):
      raise ValueError(f"{where} declares init {p.init!r} — choose {INIT_STD!r}, "
                       f"{INIT_OUT!r}, {INIT_ONES!r} or {INIT_ZEROS!r}")
    if p.family is not None and p.family not in FAMILY_PARAMS:
      raise ValueError(f"{where} declares family {p.family!r} — choose one of "
                       f"{tuple(FAMILY_PARAMS)}, or add it to FAMILY_PARAMS")


check_params(PARAMS)


def present(path: str, cfg) -> bool:
  """Whether `cfg`'s model has the parameter at `path`: no `lm_head` when tied; an MoE
  model (num_experts > 0) has `moe/*` in place of `mlp/*`, its `shared_*` only with
  shared_mlp_dim > 0; a family's parameters (`Param.family`) only in that family."""
  if path == "lm_head":
    return not cfg.tie_embeddings
  moe = getattr(cfg, "num_experts", 0) > 0
  if path.startswith(f"{LAYERS}/mlp/"):
    return not moe
  if path.startswith(f"{LAYERS}/moe/shared_"):
    return moe and cfg.shared_mlp_dim > 0
  if path.startswith(f"{LAYERS}/moe/"):
    return moe
  p = PARAMS[path]
  return p.family is None or FAMILY_PARAMS[p.family](cfg)


def param_table(cfg) -> dict:
  """`PARAMS` as a params-shaped tree of `cfg` (`present`: no `lm_head` when tied, `moe`
  or `mlp`); each leaf a `Param`. Built from the table alone: nothing is traced."""
  tree: dict = {}
  for path, p in PARAMS.items():
    if not present(path, cfg):
      continue
    *parents, name = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = p
  return tree


def param_at(key_path: tuple) -> Param:
  """The declaration of the params-tree leaf at a `jax.tree_util` key path."""
  path = "/".join(str(getattr(k, "key", k)) for k in key_path)
  if path not in PARAMS:
    raise ValueError(f"{path!r} is not a parameter declared in growjax.model.PARAMS — "
                     f"pass a params-shaped tree of growjax.model.Transformer")
  return PARAMS[path]


def logical_axes(cfg) -> Any:
  """Pytree matching the params, each leaf a tuple of logical axis names."""
  return jax.tree.map(lambda p: p.axes, param_table(cfg))
