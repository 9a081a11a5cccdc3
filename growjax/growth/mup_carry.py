"""What growth does to μP's multipliers (`growjax.model.mup`), operator by operator.

Under μP a model's function depends on its shape through three forward multipliers:
the residual branches' (L0 / L)^alpha (depth-μP), the logits' 1 / m (width) and the
query's sqrt(h0 / head_dim) (head_dim never grows, so that one never moves). When an
operator changes L or m, the large model's multipliers differ from the small one's,
and each operator states what it does about it:

- `zero`, `llama_pro` (the function-keeping depth operators): every block output
  projection (o, down) is multiplied by b_small / b_large, so each kept layer writes
  to the stream exactly what it wrote before (new and zeroed layers write zero
  either way): the logits are kept, exactly for power-of-two ratios (tested).
- the copying depth operators (`stack` / G_stack, `interpolate`, `solar`, `middle`,
  `direct`, the `stack_*` family) and `random`, `learn`: weights are copied unchanged,
  and the large model's own branch multiplier applies. Under CompleteP (alpha = 1)
  the k copies of a layer together write what the layer wrote (a finer step of the
  same residual flow, so the stacked model stays near the small one's function);
  under Depth-μP (alpha = 0.5) they write sqrt(k) times as much. Under SP nothing
  changes, as before.
- width `direct`, `split`, `zero` (the function-keeping width operators), and every
  other width operator: the output head is multiplied by m_large / m_small, so the
  logits keep their scale (and, for the function-keeping ones, their values).
  Tied embeddings cannot be compensated (the table is also the input), so width
  growth of a tied μP model is refused (`check`).
Learning rates need no carrying: each parameter's multiplier is a function of the
large model's shape (`growjax.train.optimizer.lr_multipliers`), so the large stage
trains at the rates μP gives its shape with no retuning. Adam moments of a leaf
multiplied by c are divided by c (first) and c^2 (second), so they remain the
moments of the grown leaf's own gradients.
"""

from __future__ import annotations

from typing import Any

from growjax.growth import layout
from growjax.model import LAYERS, WRITES, ModelConfig, Param, mup

KEEPS_FUNCTION_DEPTH = ("zero", "llama_pro")


def factor_fn(src: ModelConfig, dst: ModelConfig, method: str, grows_depth: bool):
  """`fn(param) -> float`: what a leaf of the grown model is multiplied by."""
  depth = 1.0
  if grows_depth and method in KEEPS_FUNCTION_DEPTH:
    depth = mup.branch_multiplier(src) / mup.branch_multiplier(dst)
  width = mup.width_multiplier(dst) / mup.width_multiplier(src)

  def factor(p: Param) -> float:
    if p.role == WRITES and LAYERS in p.axes:
      return depth
    if mup.param_class(p) == mup.OUTPUT_TABLE:
      return width
    return 1.0
  return factor


def carry(params: Any, src: ModelConfig, dst: ModelConfig, method: str,
          grows_depth: bool) -> Any:
  """The grown params with each leaf multiplied by its `factor_fn` factor (a no-op
  under SP, or where no multiplier moved)."""
  factor = factor_fn(src, dst, method, grows_depth)

  def leaf(p, x):
    f = factor(p)
    return x if f == 1.0 else x * f
  return layout.map_leaves(leaf, dst, params)


def moment_factor(p: Param, power: int, factor) -> float:
  """A grown moment's factor for a leaf multiplied by c: c^-power."""
  return factor(p) ** -power


def check(src: ModelConfig, dst: ModelConfig, grows_width: bool, names) -> None:
  """Refuses a growth whose multipliers cannot be carried (one line each)."""
  n = names
  for f in ("parametrization", "mup_base_embed_dim", "mup_base_num_layers",
            "mup_base_head_dim", "mup_depth_alpha"):
    a, b = getattr(src, f), getattr(dst, f)
    if a != b:
      raise ValueError(f"{n.large(f)}={b!r} differs from {n.small(f)}={a!r} — growth keeps "
                       f"the parametrization and its base shape (the multipliers are "
                       f"measured against it): set {n.large(f)}={a!r}")
  if mup.is_mup(dst) and grows_width and dst.tie_embeddings:
    raise ValueError(f"width growth of a μP model with {n.large('tie_embeddings')}=True "
                     f"cannot keep its logits (the head's 1/m multiplier moves and the "
                     f"tied table is also the input) — untie the embeddings, or grow depth "
                     f"only")
