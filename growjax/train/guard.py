"""Which steps and checkpoints can be trusted: the bad-step and loss-spike guard.

The train step skips an update whose loss or gradient norm is not finite (params and
optimizer state kept). This module decides, from each step's `skipped` flag and loss
read in order, what the loop does about it, so that no run ends with a ruined model
and a good checkpoint is never lost:

- a run of NaN/Inf steps (a *streak*) blocks checkpoint saves while it lasts, and
  `max_bad_steps` of them in a row stop the run;
- a loss far above the recent window (z-score over `spike_zscore` and a rise over
  `spike_min_rise` of its mean), or an eval loss that rose that much since the last
  eval, is a *spike*: the loop rolls back to the newest good checkpoint; a spike with
  nothing to roll back to counts as a bad step;
- a model with non-finite params or eval loss is never saved, and a run whose last step
  is untrusted fails instead of ending with it;
- a checkpoint is *known good* once a finite, unspiked step has run on the very model it
  holds; the newest known good one is never rotated out (`Checkpoints.mark_good`).

When the state of step S gave the first bad step, every checkpoint from S on holds a
bad model: the loop sets them aside (renamed `<step>.bad-<n>`, never deleted) and names
the newest one before. The window and the last eval loss travel in the checkpoint's
metadata, so a resumed run guards its first steps exactly as an uninterrupted one.

Pure Python on host floats: the loop reads the flags it needs anyway (one step late,
and at each save), so the guard costs no extra device sync.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

WINDOW_META = "loss_window"      # checkpoint meta: the spike guard's recent losses
EVAL_META = "last_eval_loss"     # checkpoint meta: the eval loss the eval guard compares to
MIN_WINDOW = 8                   # losses the spike guard needs before it judges


@dataclasses.dataclass(frozen=True)
class Spike:
  """A step (or eval) whose loss says the model of step `first_bad` is ruined."""
  first_bad: int
  why: str


class BadStreak(FloatingPointError):
  """Too many NaN/Inf steps in a row; `first_bad` is the step whose model gave the first."""

  def __init__(self, why: str, first_bad: int):
    super().__init__(why)
    self.why, self.first_bad = why, first_bad


class Guard:
  """The guard of one `train` call, fed every step in order (`observe`) and each eval."""

  def __init__(self, train_cfg, start_step: int, meta: dict | None = None,
               resumed_checkpoint: bool = False):
    self.max_bad = int(train_cfg.max_bad_steps)
    self.zscore = float(train_cfg.spike_zscore)
    self.window_len = int(train_cfg.spike_window)
    self.min_rise = float(train_cfg.get("spike_min_rise", 0.25))
    meta = meta or {}
    self.losses: list[float] = [float(x) for x in meta.get(WINDOW_META, [])][-self.window_len:]
    self.last_eval = meta.get(EVAL_META)
    self.start_step = start_step
    self.bad_in_a_row = 0
    self.streak_start: int | None = None
    self.last_applied = start_step   # the newest step whose update was applied
    self.unconfirmed: int | None = None   # the newest checkpoint saved, not yet confirmed
    self.eval_failed: int | None = None   # the step whose eval loss was not finite
    # The checkpoint this call resumed from is the newest known good to start with.
    self.good_step: int | None = start_step if resumed_checkpoint else None

  @property
  def in_streak(self) -> bool:
    return self.bad_in_a_row > 0

  def observe(self, step: int, skipped: bool, loss: float, spike_guard: bool = True
              ) -> Spike | None:
    """Step `step`'s flag and loss (computed on the model of step `step - 1`). Raises
    `BadStreak` at `max_bad_steps` in a row; returns a `Spike` to roll back from."""
    if skipped:
      if not self.bad_in_a_row:
        self.streak_start = step
      self.bad_in_a_row += 1
      if self.bad_in_a_row >= self.max_bad:
        raise BadStreak(f"{self.bad_in_a_row} NaN/Inf steps in a row (config.train."
                        f"max_bad_steps={self.max_bad}), the last at step {step}",
                        self.first_bad_of_streak())
      return None
    if spike_guard and self.zscore > 0:
      z = self.spike_z(loss)
      if z is not None:
        return Spike(step - 1, f"loss spike at step {step} (loss {loss:.4g}, z-score {z:.1f} "
                               f"> config.train.spike_zscore={self.zscore})")
      self.losses = (self.losses + [loss])[-self.window_len:]
    self.bad_in_a_row, self.streak_start = 0, None
    if self.unconfirmed is not None and self.last_applied <= self.unconfirmed:
      self.good_step, self.unconfirmed = self.unconfirmed, None   # its model ran fine
    self.last_applied = step
    return None

  def spike_z(self, loss: float) -> float | None:
    """The z-score of `loss` against the window when it is a spike, else None."""
    if len(self.losses) < min(self.window_len, MIN_WINDOW):
      return None
    mean, std = float(np.mean(self.losses)), float(np.std(self.losses))
    z = (loss - mean) / std if std > 0 else (math.inf if loss > mean else 0.0)
    return z if z > self.zscore and loss > mean * (1 + self.min_rise) else None

  def observe_eval(self, step: int, loss: float) -> Spike | None:
    """An eval of the model of step `step`. Not finite: that model is not saved (and the
    run fails if it is the last). Risen by more than `spike_min_rise` since the last
    eval (with the spike guard on): a spike."""
    if not math.isfinite(loss):
      self.eval_failed = step
      return None
    previous, self.last_eval = self.last_eval, loss
    if self.zscore > 0 and previous is not None and loss > previous * (1 + self.min_rise):
      return Spike(step, f"eval loss spike at step {step} ({loss:.4g} after {previous:.4g}, "
                         f"more than config.train.spike_min_rise={self.min_rise} above)")
    return None

  def unrollable(self, step: int) -> None:
    """A spike at `step` with no checkpoint before it: counted as a bad step, so nothing
    is saved until the loss is back in line (and a streak of them stops the run)."""
    self.observe(step, skipped=True, loss=math.nan)

  def first_bad_of_streak(self) -> int:
    """The step whose model gave the streak's first bad step; the model this call resumed
    from is trusted (a streak right at the start says more of the config than of it)."""
    first = self.streak_start - 1
    return first if first > self.start_step else self.streak_start

  def why_not_save(self, step: int, params_finite: bool) -> str | None:
    """None when the model of `step` may be saved, else why not (one clause)."""
    if not params_finite:
      return "its parameters are not all finite"
    if self.eval_failed == step:
      return "its eval loss is not finite"
    if self.in_streak:
      return (f"it is inside a run of {self.bad_in_a_row} NaN/Inf steps (since step "
              f"{self.streak_start})")
    return None

  def saved(self, step: int) -> None:
    self.unconfirmed = step

  def rolled_back(self, step: int, meta: dict) -> None:
    """The state is the (good) checkpoint of `step` again, with its window and eval."""
    self.bad_in_a_row, self.streak_start = 0, None
    self.last_applied, self.unconfirmed, self.good_step = step, None, step
    self.losses = [float(x) for x in meta.get(WINDOW_META, [])][-self.window_len:]
    self.last_eval = meta.get(EVAL_META)

  def forget_from(self, first_bad: int, remaining: list[int]) -> None:
    """Checkpoints from `first_bad` on were set aside: the newest remaining is good."""
    if self.unconfirmed is not None and self.unconfirmed >= first_bad:
      self.unconfirmed = None
    self.good_step = max(remaining) if remaining else None

  def to_meta(self) -> dict:
    out = {WINDOW_META: self.losses[-self.window_len:]}
    if self.last_eval is not None and math.isfinite(self.last_eval):
      out[EVAL_META] = self.last_eval
    return out
