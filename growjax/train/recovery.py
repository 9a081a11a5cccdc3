"""What the loop does about bad numbers (`growjax.train.guard` decides): each save reads
its own step's flags first and writes only a trusted model; a streak of NaN/Inf steps or
a run ending untrusted stops with `BadStepsError` naming the newest good checkpoint; a
spike rolls back to it. Checkpoints of a model known bad are set aside, never deleted.

A mixin of the loop (`growjax.train.loop._Loop`): these methods read and change the
loop's state, checkpoints, step and the batch to replay."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from growjax import distributed
from growjax import faults
from growjax.train import guard as guard_lib
from growjax.train.state import to_host, with_fp8_history
from growjax.train.step import abstract_state


class BadStepsError(FloatingPointError):
  """The run stops (exit 1) on a model it cannot trust: `config.train.max_bad_steps`
  consecutive non-finite steps, the run's end inside such a streak, or a loss spike that
  comes back after every rollback. Names the newest good checkpoint."""


MAX_ROLLBACKS = 3   # rollbacks to one checkpoint before a recurring spike stops the run


def all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


class Recovery:
  """The loop's saves, bad-step stops and rollbacks."""

  def save(self, force: bool) -> str | None:
    """Saves the model of this step when it is due (or `force`) and trusted: its own
    step's numbers are read first. Returns None when no save was due, else 'saved',
    'not saved' (an untrusted model) or 'rolled back' (that read found a spike)."""
    if not (force or self.checkpoints.manager.should_save(self.step)):
      return None
    if self.last is not None and self.last[0] == self.step:
      last, self.last = self.last, None
      if self.check_numbers(*last):
        return "rolled back"
    why_not = self.guard.why_not_save(self.step,
                                      bool(to_host(self.params_finite(self.state.params))))
    if why_not is not None:
      if self.step == self.setup.cfg.train.steps and self.guard.in_streak:
        self.stop_bad(f"the run ended inside {self.guard.bad_in_a_row} NaN/Inf steps in a "
                      f"row (steps {self.guard.streak_start}..{self.step})",
                      self.guard.first_bad_of_streak())
      if self.step == self.setup.cfg.train.steps:
        self.stop_bad(f"the run's final model (step {self.step}) is untrusted: {why_not}",
                      self.step)
      self.writer.text(f"not saving step {self.step}: {why_not}; the newest good "
                       f"checkpoint is {self._good_text()}")
      return "not saved"
    meta = dict(self.meta, flops_seen=self.account.flops_seen(self.step),
                **self.guard.to_meta())
    self.account.stalls.timed("checkpoint_s", self.state, lambda: self.checkpoints.save(
        self.step, self.state, self.data_iter.get_state(), meta, force=force))
    self.guard.saved(self.step)
    faults.maybe_kill("mid_save")
    return "saved"

  def _good_text(self) -> str:
    good = self.guard.good_step
    return "none yet" if good is None else f"step {good}"

  def check_numbers(self, step: int, step_metrics: dict, _batch, spike_guard=True) -> bool:
    """Reads `step`'s skipped flag and loss into the guard: stops the run after
    max_bad_steps NaN/Inf steps in a row, rolls back on a spike. True when it rolled
    back to a checkpoint."""
    t0 = time.perf_counter()   # the host waits here for the step's result
    skipped, loss = to_host((step_metrics["skipped"], step_metrics["loss"]))
    self.account.stalls.add("device_s", time.perf_counter() - t0)
    if float(skipped):
      self.bad_steps_total += 1
      self.history["skipped"].append(step)
    try:
      spike = self.guard.observe(step, bool(float(skipped)), float(loss), spike_guard)
    except guard_lib.BadStreak as e:
      self.stop_bad(e.why, e.first_bad)
    self.checkpoints.mark_good(self.guard.good_step)   # kept through rotation
    return spike is not None and self.roll_back(step, spike)

  def stop_bad(self, why: str, first_bad: int):
    """Sets aside the checkpoints of a model known bad and stops, naming the newest good
    checkpoint (or saying the rerun starts again from the beginning)."""
    moved = self.set_aside_from(first_bad)
    good = self.guard.good_step
    aside = (f"checkpoints {', '.join(map(str, moved))} (the model of step {first_bad} on) "
             f"set aside as <step>.bad-<n>; " if moved else "")
    where = (f"resume from the last good checkpoint, step {good} in "
             f"{self.checkpoints.directory}" if good is not None else
             f"start again from the beginning (no checkpoint before step {first_bad})")
    raise BadStepsError(f"{why}: {aside}lower config.optimizer.peak_lr and rerun to {where}")

  def set_aside_from(self, first_bad: int) -> list[int]:
    """Renames every checkpoint from `first_bad` on to `<step>.bad-<n>` (process 0;
    never deleted), so no rerun or rollback resumes a model known bad."""
    self.checkpoints.wait()
    bad = [s for s in self.checkpoints.complete_steps() if s >= first_bad]
    if jax.process_index() == 0:
      for s in bad:
        self.checkpoints.set_aside(s, "bad")
    distributed.agreed([0])   # renamed before anyone lists again
    if jax.process_index() != 0:
      self.checkpoints.manager.reload()
    remaining = [s for s in self.checkpoints.complete_steps() if s < first_bad]
    [newest] = distributed.agreed([remaining[-1] if remaining else -1])
    self.guard.forget_from(first_bad, [newest] if newest >= 0 else [])
    self.checkpoints.mark_good(self.guard.good_step)
    return bad

  def roll_back(self, step: int, spike: guard_lib.Spike) -> bool:
    """Restores the newest good checkpoint in-process (those of the spiked model set
    aside); the batches after it up to and including `step`'s are skipped (one
    dispatched after `step` is fed again). A spike with no checkpoint before it counts
    as a bad step; one that comes back after MAX_ROLLBACKS rollbacks stops the run."""
    moved = self.set_aside_from(spike.first_bad)
    latest = self.guard.good_step
    if latest is None:
      self.writer.text(f"{spike.why}, but no checkpoint before step {spike.first_bad} to "
                       f"roll back to: counted as a bad step, nothing saved until the loss "
                       f"is back")
      try:
        self.guard.unrollable(step)
      except guard_lib.BadStreak as e:
        self.stop_bad(e.why, e.first_bad)
      return False
    self.rollbacks_to[latest] = self.rollbacks_to.get(latest, 0) + 1
    if self.rollbacks_to[latest] > MAX_ROLLBACKS:
      self.stop_bad(f"{spike.why}, after {MAX_ROLLBACKS} rollbacks to step {latest}: the "
                    f"loss keeps spiking", spike.first_bad)
    self.state, _, meta = self.checkpoints.restore(
        latest, abstract_state(self.setup, self.ramp, latest), keep_fp8_history=True)
    self.state = with_fp8_history(self.setup, self.state)
    self._arm_fp8_calibration()   # a checkpoint written before delayed FP8 holds none
    self.guard.rolled_back(latest, meta)
    self.replay_batch = self.last[2] if self.last is not None else None
    self.last = None
    self.step = int(to_host(self.state.step))
    self.history["rollbacks"].append((step, latest))
    aside = (f"; checkpoints {', '.join(map(str, moved))} set aside as <step>.bad-<n>"
             if moved else "")
    self.writer.text(f"{spike.why}: rolled back to checkpoint step {latest}, skipping the "
                     f"{step - latest} batches of steps {latest + 1}..{step}{aside}")
    return True
