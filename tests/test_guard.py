"""A guard that keeps the good checkpoint (issue 26): no checkpoint is written inside a
NaN/Inf streak or with non-finite params, the newest known-good checkpoint survives
`keep_checkpoints`, checkpoints of a model known bad are set aside, and the error names
a checkpoint that restores to finite weights. Driven through the console entry point
with peak_lr = 1e9, from scratch and on resume."""

import math
import os
import sys

import jax
import numpy as np
import ml_collections
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.train import guard as guard_lib
from growjax.train import state as state_lib
from growjax import train
from tiny import tiny_base

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")
COMMON = ("--config.model.num_layers=2", "--config.data.seq_len=32",
          "--config.train.global_batch_size=8", "--config.train.log_every=1",
          "--config.train.eval_every=4", "--config.train.eval_batches=1",
          "--config.train.async_checkpointing=False", "--config.metrics.tensorboard=False",
          "--config.train.final_sample_tokens=0")


def _cli_train(monkeypatch, capsys, workdir, *overrides):
  monkeypatch.setattr(sys, "argv", ["growjax", "train", "--config", TINY, "--workdir",
                                    str(workdir), *COMMON, *overrides])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def _restored_params(ckpts, step):
  """The params of checkpoint `step`, restored as `growjax train` would."""
  setup = state_lib.build(tiny_base())
  checkpoints = ckpt_lib.Checkpoints(str(ckpts), use_async=False)
  state, _, _ = checkpoints.restore(step, setup.abstract_state)
  checkpoints.close()
  return state.params


def _all_finite(params):
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(params))


def test_lr_1e9_from_scratch_stops_and_names_a_good_checkpoint_that_survived_rotation(
    tmp_path, monkeypatch, capsys, data_dir):
  workdir = tmp_path / "run"
  code, out, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=40",
                              "--config.optimizer.peak_lr=1e9",
                              "--config.train.checkpoint_every=1",
                              "--config.train.keep_checkpoints=1")
  assert code == 1
  [line] = [l for l in err.strip().splitlines() if l.startswith("growjax train:")]
  ckpts = workdir / "checkpoints"
  # Step 1 runs at lr 0 (warmup), step 2 ruins the model (finite loss), step 3 on NaN.
  assert line.startswith(("growjax train: BadStepsError: 10 NaN/Inf steps in a row "
                         "(config.train.max_bad_steps=10), the last at step 12: "
                         "checkpoints 2 (the model of step 2 on) set aside as "
                         "<step>.bad-<n>; lower config.optimizer.peak_lr and rerun to "
                         f"resume from the last good checkpoint, step 1 in {ckpts}")), line
  assert "not saving step 3: it is inside a run of 1 NaN/Inf steps (since step 3)" in out
  # keep_checkpoints=1 rotated nothing good out: step 1 is the one left, and it is sound.
  assert ckpt_lib.Checkpoints(str(ckpts)).complete_steps() == [1]
  assert (ckpts / "2.bad-1").is_dir()
  assert _all_finite(_restored_params(ckpts, 1))
  # Following the advice works: the rerun resumes from step 1 and trains on finite losses.
  code, out, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=8",
                              "--config.train.checkpoint_every=4")
  assert code == 0, err
  assert f"resumed from {ckpts}/1" in out


def test_lr_1e9_on_resume_never_exits_0_with_a_ruined_model(tmp_path, monkeypatch, capsys,
                                                            data_dir):
  workdir = tmp_path / "run"
  code, _, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=8",
                            "--config.train.checkpoint_every=4")
  assert code == 0, err
  ckpts = workdir / "checkpoints"
  good = _restored_params(ckpts, 8)
  code, out, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=40",
                              "--config.train.checkpoint_every=4",
                              "--config.optimizer.peak_lr=1e9")
  assert code == 1
  [line] = [l for l in err.strip().splitlines() if l.startswith("growjax train:")]
  assert line.startswith("growjax train: BadStepsError: "), err
  assert f"resume from the last good checkpoint, step 8 in {ckpts}" in line
  # Nothing after step 8 was kept as a checkpoint; step 8 is the model it was.
  assert ckpt_lib.Checkpoints(str(ckpts)).complete_steps() == [1, 4, 8]   # orbax saves step 1
  assert jax.tree.all(jax.tree.map(np.array_equal, good, _restored_params(ckpts, 8)))


def test_a_run_that_ends_inside_a_streak_fails(tmp_path, monkeypatch, capsys, data_dir):
  workdir = tmp_path / "run"
  code, _, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=4",
                            "--config.train.checkpoint_every=4")
  assert code == 0, err
  real_loss = train.loss_fn
  monkeypatch.setattr(train.step, "loss_fn",
                      lambda *a: jax.tree.map(lambda x: x * math.nan, real_loss(*a)))
  code, out, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=6",
                              "--config.train.checkpoint_every=4")
  assert code == 1
  [line] = [l for l in err.strip().splitlines() if l.startswith("growjax train:")]
  ckpts = workdir / "checkpoints"
  assert line.startswith("growjax train: BadStepsError: the run ended inside 2 NaN/Inf steps "
                         "in a row (steps 5..6): lower config.optimizer.peak_lr and rerun "
                         f"to resume from the last good checkpoint, step 4 in {ckpts}")
  assert ckpt_lib.Checkpoints(str(ckpts)).complete_steps() == [1, 4]


def _train_cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(max_bad_steps=3, spike_zscore=6.0,
                                             spike_window=8, spike_min_rise=0.25), **kw))


def test_spike_needs_both_the_zscore_and_the_rise():
  g = guard_lib.Guard(_train_cfg(), 0)
  for step, loss in enumerate([3.0, 3.01, 2.99, 3.0, 3.02, 2.98, 3.0, 3.01], start=1):
    assert g.observe(step, False, loss) is None
  assert g.observe(9, False, 3.3) is None            # z ~ 30 but only +10%: batch noise
  spike = g.observe(10, False, 4.5)
  assert spike == guard_lib.Spike(9, spike.why) and spike.why.startswith(
      "loss spike at step 10 (loss 4.5, z-score")


def test_the_window_travels_in_the_checkpoint_so_a_resume_judges_alike():
  losses = [3.0, 3.01, 2.99, 3.0, 3.02, 2.98, 3.0, 3.01, 2.97]
  whole = guard_lib.Guard(_train_cfg(), 0)
  for step, loss in enumerate(losses, start=1):
    whole.observe(step, False, loss)
  resumed = guard_lib.Guard(_train_cfg(), 9, whole.to_meta(), resumed_checkpoint=True)
  fresh = guard_lib.Guard(_train_cfg(), 9, {})
  assert whole.observe(10, False, 4.5) is not None
  assert resumed.observe(10, False, 4.5) is not None
  assert fresh.observe(10, False, 4.5) is None       # without it the first steps go unguarded


def test_a_checkpoint_is_known_good_once_a_finite_step_ran_on_its_model():
  g = guard_lib.Guard(_train_cfg(), 0)
  g.observe(1, False, 3.0)
  g.saved(1)
  assert g.good_step is None
  g.observe(2, True, math.nan)                       # a NaN step: nothing learned of step 1
  assert g.good_step is None and g.why_not_save(2, True).startswith("it is inside a run")
  g.observe(3, False, 3.0)                           # the model of step 1 (2 was skipped)
  assert g.good_step == 1 and g.why_not_save(3, True) is None
  assert g.why_not_save(3, False) == "its parameters are not all finite"
  with pytest.raises(guard_lib.BadStreak) as e:
    for step in (4, 5, 6):
      g.observe(step, True, math.nan)
  assert e.value.first_bad == 3
  g = guard_lib.Guard(_train_cfg(), 0)
  assert g.observe_eval(4, 3.0) is None and g.observe_eval(8, math.nan) is None
  assert g.why_not_save(8, True) == "its eval loss is not finite"
  assert g.observe_eval(12, 3.9).first_bad == 12     # +30% over the last finite eval
