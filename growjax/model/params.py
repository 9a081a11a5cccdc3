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
# Logical axis names of activations (sharding constraints only).
ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
    "act_vocab")

# What a parameter does to the residual stream. A weight that READS it contracts the
# stream axis `embed` (its first axis: `x @ W`); one that WRITES it produces `embed`
# (its last axis) from its other axes; a norm SCALES it (its only axis is `embed`).
READS, WRITES, SCALES = "reads", "writes", "scales"
ROLE_RULES = {
    READS: f"a weight that reads the residual stream contracts '{EMBED}', its first axis "
           f"(x @ W); its other axes are outputs",
    WRITES: f"a weight that writes the residual stream produces '{EMBED}', its last axis, "
            f"from its other axes",
    SCALES: f"a norm scale has the one axis '{EMBED}'",
}
# Weight-decay classes (`growjax.train.optimizer.decay_mask`): matrices are always decayed;
# vocab-sized tables and norm scales as config.optimizer.decay_embeddings / decay_norms say.
DECAY_MATRIX, DECAY_TABLE, DECAY_NORM = "matrix", "table", "norm"
# Initialisers: normal(init_std); normal(init_std / sqrt(2 num_layers)) for the output
# projections of a block; ones.
INIT_STD, INIT_OUT, INIT_ONES = "std", "out", "ones"


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter's declaration: `axes` (logical names, `layers` first for the
  scanned per-layer parameters), `role` for the residual stream, weight-decay class
  `decay`, initialiser `init`."""
  axes: tuple[str, ...]
  role: str
  decay: str
  init: str


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
    fits = {SCALES: rest == (EMBED,),
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
    if p.init not in (INIT_STD, INIT_OUT, INIT_ONES):
      raise ValueError(f"{where} declares init {p.init!r} — choose {INIT_STD!r}, "
                       f"{INIT_OUT!r} or {INIT_ONES!r}")


check_params(PARAMS)


def param_table(cfg) -> dict:
  """`PARAMS` as a params-shaped tree of `cfg` (no `lm_head` when tied); each leaf a
  `Param`. Built from the table alone: nothing is traced."""
  tree: dict = {}
  for path, p in PARAMS.items():
    if path == "lm_head" and cfg.tie_embeddings:
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
