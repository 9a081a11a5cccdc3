"""The paper's growth-timing law fitted to a user's own measurements.

Du et al. (2024) model the best growth timing d (tokens on the small model) as

    log10 d = a log10 N + b / log10 C + c

with N the target model's parameters and C the compute budget in FLOPs, and fit
a = 0.88, b = 163.27, c = -5.74 on their runs. `growjax sweep` measures the best d
at its own (N, C) point; this module fits (a, b, c) to such points by least squares
in log10 d and evaluates the law. It does not train and reads no files.

What can be fitted depends on the points. The columns of the fit are log10 N,
1 / log10 C and 1, so:

- points whose (log10 N, 1 / log10 C) span a plane (3 or more, not on one line):
  a, b and c are fitted;
- two points, or points on one line in (log10 N, 1 / log10 C): a and c, b fixed at the
  paper's; points that differ in C only (one N): b and c, a fixed at the paper's;
- one distinct (N, C) point: c alone, a and b fixed at the paper's: the law then
  passes through the measured point with the paper's slopes.

`Fit.note` says which case applied; the fixed coefficients are the paper's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

PAPER = {"a": 0.88, "b": 163.27, "c": -5.74}
COEFFICIENTS = ("a", "b", "c")
# Free sets tried in order: the first whose columns are independent on the points wins.
_FREE_SETS = (("a", "b", "c"), ("a", "c"), ("b", "c"), ("c",))


@dataclasses.dataclass(frozen=True)
class Point:
  """One measurement: the target's parameters N, the budget C in FLOPs, and the best
  growth timing d in tokens found there."""
  params: float
  flops: float
  d_tokens: float


@dataclasses.dataclass(frozen=True)
class Fit:
  coefficients: dict[str, float]     # a, b, c: fitted or fixed
  fitted: tuple[str, ...]            # which of a, b, c were fitted
  stderr: dict[str, float | None]    # standard error of each fitted one (None: no dof)
  num_points: int
  distinct_points: int
  residual_rms: float                # in log10 d
  note: str

  def as_dict(self) -> dict:
    """As JSON keeps it (lists, not tuples)."""
    return {**dataclasses.asdict(self), "fitted": list(self.fitted)}


def _features(params: float, flops: float) -> dict[str, float]:
  if params <= 0 or flops <= 1:
    raise ValueError(f"a law point needs N > 0 and C > 1 FLOPs (got N={params}, C={flops}).")
  return {"a": math.log10(params), "b": 1.0 / math.log10(flops), "c": 1.0}


def log10_d(coefficients: dict[str, float], params: float, flops: float) -> float:
  x = _features(params, flops)
  return sum(coefficients[k] * x[k] for k in COEFFICIENTS)


def predict_d(coefficients: dict[str, float], params: float, flops: float) -> float:
  """d in tokens by the law with these coefficients (PAPER: `timing.growth_tokens`)."""
  return 10 ** log10_d(coefficients, params, flops)


def budget_where_d_fits(coefficients: dict[str, float], params: float) -> float | None:
  """The budget C (FLOPs) above which the law's d is less than the whole budget's tokens
  D = C / (6 N); below it the small stage alone would use every token the budget buys the
  target, so the law's advice cannot be followed. With x = log10 C, d = D is
  x^2 - (a log10 N + c + log10 6N) x - b = 0; the largest root > 0 (None: no root, the
  law's d is below D at every budget or at none)."""
  a, b, c = (coefficients[k] for k in COEFFICIENTS)
  k = a * math.log10(params) + c + math.log10(6.0 * params)
  disc = k * k + 4.0 * b
  if disc < 0:
    return None
  x = (k + math.sqrt(disc)) / 2.0
  return 10 ** x if x > 0 else None


def _independent(x: np.ndarray) -> bool:
  """Whether the columns of x (rows: distinct points) are linearly independent; each
  column scaled to unit size first (1 / log10 C is ~0.05, log10 N ~ 9)."""
  if x.shape[0] < x.shape[1]:
    return False
  scaled = x / np.maximum(np.abs(x).max(axis=0), 1e-300)
  return int(np.linalg.matrix_rank(scaled, tol=1e-9)) == x.shape[1]


def _note(free: tuple[str, ...], distinct: int) -> str:
  if free == COEFFICIENTS:
    return f"a, b and c fitted on {distinct} distinct (N, C) points"
  fixed = [k for k in COEFFICIENTS if k not in free]
  fixed_text = " and ".join(f"{k} = {PAPER[k]:g}" for k in fixed)
  if free == ("c",):
    why = ("1 distinct (N, C) point" if distinct == 1 else
           f"{distinct} distinct (N, C) points that do not separate N from C")
  elif free == ("a", "c"):
    why = (f"{distinct} distinct (N, C) points" +
           (" on one line in (log10 N, 1 / log10 C)" if distinct >= 3 else ""))
  else:
    why = f"{distinct} distinct (N, C) points differing in C only"
  return (f"{why}: only {' and '.join(free)} fitted, {fixed_text} fixed at the paper's "
          f"(sweeps at other model sizes N and budgets C, e.g. `growjax sweep --also "
          f"OTHER_SWEEP`, make the rest identifiable)")


def fit(points: Sequence[Point]) -> Fit:
  """Least squares in log10 d over the points; the coefficients the points cannot
  identify stay at the paper's (see the module docstring). Repeated (N, C) points all
  count in the fit (their spread is noise), once in identifiability."""
  if not points:
    raise ValueError("no law points to fit: the sweep found no growth timing d that "
                     "reached the scratch run's loss — train longer or widen --d.")
  feats = np.array([[_features(p.params, p.flops)[k] for k in COEFFICIENTS] for p in points])
  y = np.array([math.log10(p.d_tokens) for p in points])
  distinct_rows = np.unique(np.round(feats, 12), axis=0)
  for free in _FREE_SETS:
    cols = [COEFFICIENTS.index(k) for k in free]
    if _independent(distinct_rows[:, cols]):
      break
  cols = [COEFFICIENTS.index(k) for k in free]
  fixed = [i for i in range(3) if i not in cols]
  # Move the fixed terms to the left: y - sum(fixed coefficient * feature).
  target = y - feats[:, fixed] @ np.array([PAPER[COEFFICIENTS[i]] for i in fixed]) \
      if fixed else y
  x = feats[:, cols]
  solution, *_ = np.linalg.lstsq(x, target, rcond=None)
  coefficients = dict(PAPER)
  coefficients.update({k: float(v) for k, v in zip(free, solution)})
  residual = target - x @ solution
  dof = len(points) - len(free)
  rms = float(np.sqrt(np.mean(residual ** 2)))
  stderr: dict[str, float | None] = {k: None for k in free}
  if dof > 0:
    sigma2 = float(residual @ residual) / dof
    cov = sigma2 * np.linalg.pinv(x.T @ x)
    stderr = {k: float(math.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(free)}
  return Fit(coefficients=coefficients, fitted=tuple(free), stderr=stderr,
             num_points=len(points), distinct_points=len(distinct_rows), residual_rms=rms,
             note=_note(tuple(free), len(distinct_rows)))


def describe(result: Fit) -> str:
  """The fitted coefficients beside the paper's, one line each, and the note."""
  lines = ["growth-timing law  log10 d = a log10 N + b / log10 C + c   (d in tokens)",
           f"  {'':4}{'fitted':>12}{'paper':>10}"]
  for k in COEFFICIENTS:
    v = result.coefficients[k]
    if k in result.fitted:
      err = result.stderr.get(k)
      extra = f"  +- {err:.3g}" if err is not None else ""
      lines.append(f"  {k:4}{v:12.4g}{PAPER[k]:10.4g}{extra}")
    else:
      lines.append(f"  {k:4}{'(fixed)':>12}{PAPER[k]:10.4g}")
  lines.append(f"  {result.num_points} point(s), residual rms {result.residual_rms:.3g} "
               f"in log10 d; {result.note}")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Crossover:
  """Where growth stops paying: the FLOPs saved modelled as a + b ln(x) in x, the small
  stage's tokens per small-model parameter, and x* where that reaches zero."""
  a: float
  b: float
  crossover: float | None        # x* = exp(-a / b) when savings fall with x, else None
  num_points: int
  residual_rms: float

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def fit_crossover(tokens_per_param: Sequence[float], savings: Sequence[float]) -> Crossover:
  """Least squares of saving = a + b ln(x) over the points (x > 0, two distinct x at
  least). Growth over-trains the small model as x grows (arXiv 2605.13405 finds the gains
  shrink above about 20 tokens per parameter): with b < 0 the crossover x* =
  exp(-a / b) is where the fit says scratch starts to win; with b >= 0 the points show
  no crossover (None)."""
  x = np.asarray(tokens_per_param, float)
  y = np.asarray(savings, float)
  keep = (x > 0) & np.isfinite(y)
  x, y = x[keep], y[keep]
  if len(np.unique(x)) < 2:
    raise ValueError(f"a crossover needs grow runs at two or more small-stage lengths, got "
                     f"{len(np.unique(x))} — sweep more d values")
  design = np.stack([np.ones_like(x), np.log(x)], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
  rms = float(np.sqrt(np.mean((design @ np.array([a, b]) - y) ** 2)))
  return Crossover(float(a), float(b), float(math.exp(-a / b)) if b < 0 else None,
                   int(len(x)), rms)
