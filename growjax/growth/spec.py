"""What one growth means, checked before any array is touched.

`resolve` turns (small config, large config, method, width method, layer map,
growth factor `g`, `allow_inexact`) into a `GrowthSpec`, or raises a one-line
`ValueError` `<what is wrong> — <the fix>`. It is the one place that checks such
a combination: `grow`, `grow_opt_state`, `growjax grow` and grow runs all go
through it, so params and optimizer state are always grown by the same
operator. Errors spell each input as the caller wrote it (`Names`): `grow`'s
keywords (`LIBRARY`), `growjax grow`'s flags (`CLI`) or a grow run's config
fields (`GROW_RUN`). A layer map of None or [] means "no explicit map".

Exactness. Width `direct` (and `split`: direct plus zero-sum noise on the copies)
keeps the function exactly only when dst.embed_dim is a whole multiple of
src.embed_dim (else every RMSNorm sees a weighted mean square and the logits
move by several percent): `resolve` refuses it unless `allow_inexact`. Width `zero` is exact only when dst.norm_eps = src.norm_eps *
E / E'; dst's norm_eps is the large config's, which the large run trains with,
so growth cannot set it: the spec records it (`inexact`), `grow` warns and
`growjax grow` prints the measured change with the value to set. Depth
operators other than `zero` and the `llama_pro` preset (copies with zero
writers, `depth.zeroed_layers`) do not promise to keep the function at all.
Nothing here touches arrays.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from growjax.growth import depth, experts, mup_carry, width
from growjax.model import AXIS_FIELDS, FAMILY_FIELDS, HEAD_DIM, LAYERS, VOCAB, ModelConfig, mup

DEPTH_METHODS = depth.PRESETS + ("direct", "zero", "random", "learn")
WIDTH_METHODS = ("direct", "split", "zero", "random", "learn")
# Width operator used when `width_method` is not given: the same family as `method`.
DEFAULT_WIDTH = {**{m: "direct" for m in depth.PRESETS + ("direct",)},
                 "zero": "zero", "random": "random", "learn": "learn"}
WIDTH_FIELDS = tuple(AXIS_FIELDS[a] for a in width.AXES)
KEPT_FIELDS = (AXIS_FIELDS[VOCAB], AXIS_FIELDS[HEAD_DIM], "tie_embeddings")
OPT_STATE_MODES = ("reset", "grow")
INEXACT_EMBED, INEXACT_NORM_EPS = "embed_factor", "norm_eps"  # GrowthSpec.inexact
INEXACT_DROP = "drop_upcycling"
INEXACT_QK_NORM = "qk_norm_whole"   # new heads inside a whole-projection q/k norm (OLMo-2)


@dataclasses.dataclass(frozen=True)
class Names:
  """How errors spell the inputs: `src` / `dst` prefix the small and large models'
  fields; `style` spells an argument as a keyword (`kw`), a `growjax grow` flag
  (`flag`) or a `config.growth` field (`config`)."""
  src: str
  dst: str
  style: str
  renamed: tuple[tuple[str, str], ...] = ()

  def small(self, field: str) -> str:
    return f"{self.src}.{field}"

  def large(self, field: str) -> str:
    return f"{self.dst}.{field}"

  def arg(self, key: str, value: Any) -> str:
    key = dict(self.renamed).get(key, key)
    if self.style == "flag":
      if value is True:
        return f"--{key}"
      if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
      return f"--{key}={value}"
    if self.style == "config":
      value = list(value) if isinstance(value, tuple) else value
      return f"config.growth.{key}={value!r}"
    return f"{key}={value!r}"


LIBRARY = Names("src", "dst", "kw", (("opt_state", "mode"),))
CLI = Names("the --from checkpoint's model", "config.model", "flag")
GROW_RUN = Names("config.growth.small_model", "config.model", "config")


@dataclasses.dataclass(frozen=True)
class GrowthSpec:
  src: ModelConfig
  dst: ModelConfig
  mid: ModelConfig                  # dst's widths at src's depth: width grows first
  method: str                       # depthwise operator
  width_method: str | None          # None: no width growth
  layer_map: tuple[int, ...] | None  # None: no depth growth; the init map for 'learn'
  inexact: str = ""                 # why a function-preserving width operator is not
  #                                   exact here: '', INEXACT_EMBED or INEXACT_NORM_EPS
  width_noise: float = width.DEFAULT_NOISE  # `split`: noise relative to a copy's RMS
  experts: str | None = None        # expert growth (`growjax.growth.experts`): upcycle,
  #                                   multiply or None, at src's depth before depth grows
  drop_fraction: float = 0.0        # Drop-Upcycling: the re-drawn fraction of units

  @property
  def needs_rng(self) -> bool:
    return (self.width_method in ("zero", "random", "split")
            or (self.layer_map is not None and depth.NEW in self.layer_map)
            or bool(self.drop_fraction)
            or (self.experts == experts.UPCYCLE and experts.random_router(self.src, self.dst)))

  @property
  def zero_writers(self) -> bool | tuple[int, ...]:
    """`depth.layers_fn`'s `zero_writers` for params: True for `zero` (new layers),
    the zeroed copies for `llama_pro`, else False."""
    if self.method == "zero":
      return True
    return depth.zeroed_layers(self.method, self.layer_map or ()) or False

  @property
  def learn_phases(self) -> int:
    """How many `learn` phases (width, depth) this growth trains: 0, 1 or 2."""
    return (self.width_method == "learn") + (self.layer_map is not None
                                             and self.method == "learn")

  @property
  def learns(self) -> bool:
    return self.learn_phases > 0

  def check_opt_state(self, mode: str, names: Names = LIBRARY) -> None:
    """Refuses an optimizer-state mode this growth cannot give (before any compute)."""
    if mode not in OPT_STATE_MODES:
      raise ValueError(f"{names.arg('opt_state', mode)} is not an optimizer-state mode — "
                       f"choose reset (fresh state, the paper) or grow (map the moments)")
    if mode == "grow" and self.learns:
      raise ValueError(f"{names.arg('opt_state', mode)} cannot follow 'learn': its dense "
                       f"maps have no moment mapping — use {names.arg('opt_state', 'reset')}")

  def inexact_message(self, names: Names = LIBRARY) -> tuple[str, str]:
    """(what is inexact, how to make it exact) for an inexact spec."""
    n, e_src, e_dst = names, self.src.embed_dim, self.dst.embed_dim
    if self.inexact == INEXACT_DROP:
      return (f"Drop-Upcycling ({n.arg('drop_fraction', self.drop_fraction)}) re-draws "
              f"that fraction of every expert's hidden units, so the function changes",
              f"set {n.arg('drop_fraction', 0.0)} to upcycle exactly")
    if self.inexact == INEXACT_EMBED:
      return (f"width {self.width_method} from {n.small('embed_dim')}={e_src} to {n.large('embed_dim')}="
              f"{e_dst} does not keep the function: {e_dst} is not a whole multiple of "
              f"{e_src}, so every RMSNorm sees a weighted mean square",
              f"set {n.large('embed_dim')} to a multiple of {e_src} (e.g. {2 * e_src})")
    if self.inexact == INEXACT_QK_NORM:
      return (f"width zero from {self.src.num_heads}/{self.src.num_kv_heads} to "
              f"{self.dst.num_heads}/{self.dst.num_kv_heads} heads does not keep the "
              f"function of a model with qk_norm='whole' (OLMo-2): the new heads' q and k "
              f"enter the norm's mean square over all heads",
              f"grow the heads with {n.arg('width_method', 'direct')} (exact: its copies "
              f"keep the mean square)")
    exact = self.src.norm_eps * e_src / e_dst
    return (f"width zero keeps the function exactly only with {n.large('norm_eps')}="
            f"{exact:g} ({n.small('norm_eps')} x {e_src}/{e_dst}); with {self.dst.norm_eps:g} "
            f"every RMSNorm is off by about eps / mean(x^2)",
            f"set {n.large('norm_eps')}={exact!r}")


def check_pair(src: ModelConfig, dst: ModelConfig, names: Names = LIBRARY) -> None:
  """Configs a growth operator can connect at all."""
  n = names
  src.validate(n.src)
  dst.validate(n.dst)
  fixes = {"vocab_size": "growth keeps the vocabulary",
           "head_dim": "growth keeps head_dim (it adds heads, not head size)",
           "tie_embeddings": "growth keeps tie_embeddings"}
  for f in FAMILY_FIELDS:   # a model family's parameters and computation
    a, b = getattr(src, f), getattr(dst, f)
    if a != b:
      raise ValueError(f"{n.large(f)}={b!r} differs from {n.small(f)}={a!r} — growth "
                       f"keeps the model family: set {n.large(f)}={a!r}")
  for f in KEPT_FIELDS:
    a, b = getattr(src, f), getattr(dst, f)
    if a != b:
      raise ValueError(f"{n.large(f)}={b!r} differs from {n.small(f)}={a!r} — {fixes[f]}: "
                       f"set {n.large(f)}={a!r}")
  for f in (AXIS_FIELDS[LAYERS],) + WIDTH_FIELDS:
    a, b = getattr(src, f), getattr(dst, f)
    if b < a:
      raise ValueError(f"{n.large(f)}={b} is smaller than {n.small(f)}={a} — growth only "
                       f"enlarges a model: set {n.large(f)} >= {a}")
  r_src = src.num_heads // src.num_kv_heads
  r_dst = dst.num_heads // dst.num_kv_heads
  if r_dst < r_src:
    raise ValueError(
        f"{n.large('num_heads')} / {n.large('num_kv_heads')} = {dst.num_heads}/"
        f"{dst.num_kv_heads} = {r_dst} query heads per kv head is below the small model's "
        f"{r_src}, so a small query head would lose its kv head — set "
        f"{n.large('num_heads')} to a multiple of {n.large('num_kv_heads')} that is >= "
        f"{r_src * dst.num_kv_heads}, or lower {n.large('num_kv_heads')}")


def _check_g(src: ModelConfig, dst: ModelConfig, g: int | None, n: Names) -> None:
  if g is None:
    return
  if not isinstance(g, int) or g < 1:
    raise ValueError(f"{n.arg('g', g)} is not a growth factor — give a positive integer")
  if dst.num_layers != g * src.num_layers:
    raise ValueError(f"{n.arg('g', g)} but {n.large('num_layers')}={dst.num_layers} is not "
                     f"{g} x {n.small('num_layers')}={src.num_layers} — set "
                     f"{n.large('num_layers')}={g * src.num_layers} or drop {n.arg('g', g)}")


def _check_preset(method: str, n_src: int, n_dst: int, n: Names) -> None:
  """Refuses a preset that cannot map `n_src` onto `n_dst` layers."""
  if method == "stack" and n_dst % n_src:
    raise ValueError(
        f"{n.arg('method', method)} needs {n.large('num_layers')}={n_dst} to be a whole "
        f"multiple of {n.small('num_layers')}={n_src} (growth factor g={n_dst / n_src:g}) — "
        f"use a multiple such as {n_src * max(2, round(n_dst / n_src))}, or "
        f"{n.arg('method', 'interpolate')}, or an explicit layer map")
  if method == "llama_pro":
    _check_llama_pro(n_src, n_dst, n)
  if method == "solar" and not (n_dst % 2 == 0 and n_src < n_dst <= 2 * n_src):
    fits = [d for d in range(n_src + 1, 2 * n_src + 1) if d % 2 == 0]
    raise ValueError(
        f"{n.arg('method', method)} joins two copies of the {n_src} small layers with m "
        f"dropped at the seam, so {n.large('num_layers')} = 2 x {n_src} - 2m must be even "
        f"and in {n_src + 1}..{2 * n_src}, got {n_dst} — set {n.large('num_layers')}="
        f"{min(fits, key=lambda d: abs(d - n_dst))} (or any even value in that range)")
  if method not in depth.STACK_PARTS:
    return
  part = depth.stack_part(method, n_src)
  if part.size == 0:
    raise ValueError(f"{n.arg('method', method)} needs {n.small('num_layers')} >= 3 to have "
                     f"a {method[6:]} third, got {n_src} — use {n.arg('method', 'stack')} "
                     f"or an explicit layer map")
  extra, k = n_dst - n_src, part.size
  if extra % k:
    raise ValueError(
        f"{n.arg('method', method)} repeats the {k} layer(s) {part.tolist()} of the small "
        f"model, so {n.large('num_layers')} - {n.small('num_layers')} = {extra} must be a "
        f"multiple of {k} — use {n.large('num_layers')}={n_src + k * max(1, round(extra / k))} "
        f"or an explicit layer map")


def _check_llama_pro(n_src: int, n_dst: int, n: Names) -> None:
  """`llama_pro` spreads its `n_dst - n_src` new layers evenly: one after every
  `n_src / (n_dst - n_src)` small layers."""
  extra = n_dst - n_src
  if n_src % extra == 0:
    return
  fits = [n_src + d for d in range(1, n_src + 1) if n_src % d == 0]
  raise ValueError(
      f"{n.arg('method', 'llama_pro')} inserts {n.large('num_layers')} - "
      f"{n.small('num_layers')} = {n_dst} - {n_src} = {extra} new layers, one after every "
      f"{n_src}/{extra} small layers, which is not whole — set {n.large('num_layers')}="
      f"{min(fits, key=lambda d: abs(d - n_dst))} ({n_src} + a divisor of {n_src}: "
      f"{', '.join(map(str, fits))})")


def _check_map(m: tuple[int, ...], n_src: int, n_dst: int, method: str,
               n: Names) -> tuple[int, ...]:
  """An explicit map for `method`: -1 (new layer) only for zero / random; for zero,
  the old layers exactly once, in order."""
  if len(m) != n_dst:
    raise ValueError(f"{n.arg('layer_map', m)} has {len(m)} entries but "
                     f"{n.large('num_layers')}={n_dst} — give one source layer per large layer")
  allow_new = method in ("zero", "random")
  bad = [i for i in m if not (depth.NEW if allow_new else 0) <= i < n_src]
  if bad:
    allowed = f"-1 (new layer) or 0..{n_src - 1}" if allow_new else (
        f"0..{n_src - 1} (-1, a new layer, needs {n.arg('method', 'zero')} or "
        f"{n.arg('method', 'random')})")
    raise ValueError(f"{n.arg('layer_map', m)}: entries {bad} point past the small model "
                     f"({n.small('num_layers')}={n_src}) — entries must be {allowed}")
  if method == "zero" and [i for i in m if i != depth.NEW] != list(range(n_src)):
    raise ValueError(f"{n.arg('layer_map', m)} does not keep the function — under "
                     f"{n.arg('method', 'zero')} it must hold every small layer "
                     f"0..{n_src - 1} once, in order, with -1 for the new layers")
  return m


def _depth_map(method: str, explicit: tuple[int, ...] | None, n_src: int, n_dst: int,
               n: Names) -> tuple[int, ...] | None:
  if explicit is not None and method in depth.PRESETS:
    raise ValueError(f"{n.arg('layer_map', explicit)} is given but {n.arg('method', method)} "
                     f"is a preset with its own map — use {n.arg('method', 'direct')} (or "
                     f"zero, random, learn) with a layer map")
  if explicit is None and n_src == n_dst:
    return None
  if method in depth.PRESETS:
    _check_preset(method, n_src, n_dst, n)
    return depth.preset_map(method, n_src, n_dst)
  if explicit is not None:
    return _check_map(explicit, n_src, n_dst, method, n)
  if method == "direct":
    example = depth.preset_map("interpolate", n_src, n_dst)
    raise ValueError(f"{n.arg('method', 'direct')} needs a layer map, one small layer per "
                     f"large layer — give one, e.g. {n.arg('layer_map', example)}, or use a "
                     f"preset such as {n.arg('method', 'stack')}")
  if method in ("zero", "random"):
    return depth.insert_map(n_src, n_dst)
  if n_dst % n_src:  # learn starts from G_stack
    raise ValueError(f"{n.arg('method', 'learn')} starts from G_stack, which needs "
                     f"{n.large('num_layers')}={n_dst} to be a multiple of "
                     f"{n.small('num_layers')}={n_src} — give a layer map (e.g. the "
                     f"'interpolate' one) to start from another map")
  return depth.preset_map("stack", n_src, n_dst)


def _inexact(src: ModelConfig, dst: ModelConfig, width_method: str | None) -> str:
  if width_method in ("direct", "split") and dst.embed_dim % src.embed_dim:
    return INEXACT_EMBED
  if width_method == "zero" and getattr(dst, "qk_norm", "none") == "whole" and (
      dst.num_heads != src.num_heads or dst.num_kv_heads != src.num_kv_heads):
    return INEXACT_QK_NORM
  exact_eps = src.norm_eps * src.embed_dim / dst.embed_dim
  if width_method == "zero" and not math.isclose(dst.norm_eps, exact_eps, rel_tol=1e-6):
    return INEXACT_NORM_EPS
  return ""


def _check_experts(src: ModelConfig, dst: ModelConfig, drop_fraction: float,
                   grows_width: bool, n: Names) -> str | None:
  """The expert growth src -> dst (`growjax.growth.experts`), or a one-line refusal."""
  if src.num_experts and not dst.num_experts:
    raise ValueError(f"{n.large('num_experts')}=0 but {n.small('num_experts')}="
                     f"{src.num_experts} — growth does not turn experts back into one MLP: "
                     f"set {n.large('num_experts')} >= {src.num_experts}")
  what = experts.kind(src, dst)
  if grows_width and src.num_experts:
    raise ValueError(f"{n.small('num_experts')}={src.num_experts}: width growth of a "
                     f"mixture of experts is not built — grow the dense model's widths "
                     f"first, then upcycle it")
  if not 0.0 <= float(drop_fraction) < 1.0 or (drop_fraction and what != experts.UPCYCLE):
    raise ValueError(f"{n.arg('drop_fraction', drop_fraction)}: Drop-Upcycling re-draws a "
                     f"fraction in [0, 1) of the experts a dense model is upcycled into — "
                     f"use it with a dense {n.small('num_experts')}=0 and an MoE "
                     f"{n.large('num_experts')}, or set {n.arg('drop_fraction', 0.0)}")
  if what is None:
    return None
  if mup.is_mup(dst):
    raise ValueError(f"{n.large('parametrization')}={dst.parametrization!r}: expert growth "
                     f"of a μP model is not built (its multipliers are not carried into "
                     f"experts) — upcycle under 'sp'")
  if grows_width:
    raise ValueError(f"the experts and the widths ({', '.join(WIDTH_FIELDS)}) grow in one "
                     f"step — grow the widths first (a dense width growth), then upcycle "
                     f"with every width field of {n.dst} equal to {n.src}'s")
  k, x = dst.experts_per_token, dst.num_experts
  if what == experts.UPCYCLE:
    m = dst.expert_mlp_dim
    if dst.shared_mlp_dim:
      raise ValueError(f"{n.large('shared_mlp_dim')}={dst.shared_mlp_dim}: upcycling into a "
                       f"shared expert is not built — set {n.large('shared_mlp_dim')}=0")
    if src.mlp_dim % m:
      raise ValueError(f"{n.large('expert_mlp_dim')}={m} does not divide "
                       f"{n.small('mlp_dim')}={src.mlp_dim} — each expert is a copy or an "
                       f"equal segment of the dense MLP: set a divisor (e.g. {src.mlp_dim})")
    g = src.mlp_dim // m
    if k % g:
      raise ValueError(f"{n.large('experts_per_token')}={k} is not a multiple of the "
                       f"{g} segments the dense MLP is cut into ({n.small('mlp_dim')}="
                       f"{src.mlp_dim} / {n.large('expert_mlp_dim')}={m}), so the chosen "
                       f"experts cannot add up to it — set {n.large('experts_per_token')}="
                       f"{g * max(1, k // g)}")
    return what
  c = x // src.num_experts
  same = ("expert_mlp_dim", "shared_mlp_dim", "moe_router")
  changed = [f for f in same if getattr(src, f) != getattr(dst, f)]
  if changed or x % src.num_experts or c < 2 or k != c * src.experts_per_token:
    raise ValueError(f"{n.large('num_experts')}={x}, {n.large('experts_per_token')}={k}: "
                     f"expert growth copies every expert c times and takes c times as many "
                     f"per token (c = 2, 3, ...), keeping {', '.join(same)} — set "
                     f"{n.large('num_experts')}={2 * src.num_experts}, "
                     f"{n.large('experts_per_token')}={2 * src.experts_per_token}"
                     + (f" and {n.large(changed[0])}={getattr(src, changed[0])!r}"
                        if changed else ""))
  return what


def resolve(src: ModelConfig, dst: ModelConfig, method: str = "stack",
            width_method: str | None = None, layer_map: Sequence[int] | None = None, *,
            g: int | None = None, allow_inexact: bool = False,
            width_noise: float | None = None, drop_fraction: float = 0.0,
            names: Names = LIBRARY) -> GrowthSpec:
  """The growth `src -> dst` by `method` / `width_method` / `layer_map`, checked.

  `layer_map`: None or empty for none. `g`: the depth factor, checked against the
  configs when given. `allow_inexact`: accept a width `direct` / `split` that cannot
  keep the function (see the module docstring). `width_noise`: `split`'s noise
  relative to a copy's RMS (None: `width.DEFAULT_NOISE`), a finite number > 0.
  `drop_fraction`: Drop-Upcycling's re-drawn fraction of each expert's units (dense ->
  MoE only; inexact). An MoE `dst` sets the expert growth (`growjax.growth.experts`).
  """
  n = names
  check_pair(src, dst, n)
  if method not in DEPTH_METHODS:
    raise ValueError(f"{n.arg('method', method)} is not a depth operator — choose one of "
                     f"{', '.join(DEPTH_METHODS)}")
  if width_method is not None and width_method not in WIDTH_METHODS:
    raise ValueError(f"{n.arg('width_method', width_method)} is not a width operator — "
                     f"choose one of {', '.join(WIDTH_METHODS)}")
  _check_g(src, dst, g, n)
  noise = width.DEFAULT_NOISE if width_noise is None else width_noise
  if (isinstance(noise, bool) or not isinstance(noise, (int, float))
      or not math.isfinite(noise) or noise <= 0):
    raise ValueError(f"{n.arg('width_noise', width_noise)} is not a noise scale — give a "
                     f"finite number > 0 (relative to a split copy's RMS, e.g. "
                     f"{width.DEFAULT_NOISE}); for no noise use "
                     f"{n.arg('width_method', 'direct')}")
  explicit = tuple(int(i) for i in layer_map) if layer_map else None
  lmap = _depth_map(method, explicit, src.num_layers, dst.num_layers, n)
  grows_width = any(getattr(src, f) != getattr(dst, f) for f in WIDTH_FIELDS)
  mup_carry.check(src, dst, grows_width, n)
  wm = (width_method or DEFAULT_WIDTH[method]) if grows_width else None
  what = _check_experts(src, dst, drop_fraction, grows_width, n)
  spec = GrowthSpec(src, dst, dst.replace(num_layers=src.num_layers), method, wm, lmap,
                    INEXACT_DROP if drop_fraction else _inexact(src, dst, wm), float(noise),
                    what, float(drop_fraction))
  if spec.inexact in (INEXACT_EMBED, INEXACT_QK_NORM) and not allow_inexact:
    what, fix = spec.inexact_message(n)
    raise ValueError(f"{what} — {fix}, or pass {n.arg('allow_inexact', True)} to accept "
                     f"the change")
  return spec
