"""Warmup-stable-decay (`config.optimizer.schedule='wsd'`): the schedule equals its
formula for each decay shape; a growth event in the stable phase sees one continuous
schedule, and a grow run stopped and resumed across the growth trains exactly as an
uninterrupted one; bad fields are one line through the console entry point."""

import json
import math
import os

import pytest

from growjax import cli
from growjax.growth import stages
from growjax.train import optimizer as opt_lib
from tiny import ROOT, grow_config


def _formula(step, peak, end, warmup, total, fraction, shape):
  start = total - round(total * fraction)
  if step < warmup:
    return peak * step / warmup
  t = min(max((step - start) / (total - start), 0.0), 1.0)
  f = {"1-sqrt": 1 - math.sqrt(t), "linear": 1 - t, "cosine": 0.5 * (1 + math.cos(math.pi * t))}
  return end + (peak - end) * f[shape]


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_wsd_equals_its_formula(shape):
  schedule = opt_lib.wsd_schedule(3e-4, 3e-5, 100, 1000, 0.2, shape)
  for step in (0, 1, 50, 99, 100, 101, 500, 799, 800, 801, 900, 999, 1000, 1200):
    assert float(schedule(step)) == pytest.approx(
        _formula(step, 3e-4, 3e-5, 100, 1000, 0.2, shape), rel=1e-6, abs=1e-12), step
  assert float(schedule(400)) == pytest.approx(3e-4)            # the stable phase
  assert float(schedule(1000)) == pytest.approx(3e-5)


def _logged(workdir):
  """{step: (loss, lr)} of both stages' metrics.jsonl (a rerun's lines last)."""
  out = {}
  for stage in ("small", "large"):
    path = os.path.join(workdir, stage, "metrics.jsonl")
    for line in open(path):
      row = json.loads(line)
      if "loss" in row:
        out[row["step"]] = (row["loss"], row["lr"])
  return out


def test_a_growth_in_the_stable_phase_continues_the_schedule_and_resumes_exactly(
    tmp_path, data_dir):
  cfg = grow_config()
  cfg.optimizer.schedule = "wsd"
  cfg.optimizer.decay_fraction = 0.3       # decay from step 7 of 10; growth at step 4
  cfg.optimizer.decay_shape = "linear"
  stages.run(cfg, str(tmp_path / "whole"))
  whole = _logged(tmp_path / "whole")
  assert sorted(whole) == list(range(1, 11))
  o = cfg.optimizer
  for step, (_, lr) in whole.items():   # the step's lr is the schedule at its start
    assert lr == pytest.approx(_formula(step - 1, o.peak_lr, o.end_lr, o.warmup_steps, 10,
                                        0.3, "linear"), rel=1e-6, abs=1e-12), step
  assert whole[4][1] == whole[5][1] == pytest.approx(o.peak_lr)   # last small, first large
  # Stopped every 3 steps of a stage, across the growth, and resumed: the same run.
  for _ in range(6):
    stages.run(cfg, str(tmp_path / "resumed"), stop_after_steps=3)
  assert _logged(tmp_path / "resumed") == whole


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.schedule=linear", "config.optimizer.schedule='linear' — choose one "
                                           "of cosine, wsd"),
    ("--config.optimizer.decay_fraction=1.5", "config.optimizer.decay_fraction=1.5 — give "
                                              "the share of the steps"),
    ("--config.optimizer.decay_shape=exp", "config.optimizer.decay_shape='exp' — choose one "
                                           "of 1-sqrt, linear, cosine"),
    ("--config.optimizer.decay_fraction=0.95", "the WSD decay starts at step 20 "
                                               "(decay_fraction=0.95 of 400 steps), inside "
                                               "the warmup of 40 steps"),
])
def test_bad_wsd_fields_are_one_line(override, message, tmp_path, capsys):
  argv = ["growjax", "train", f"--config={ROOT}/configs/tiny.py",
          f"--workdir={tmp_path / 'run'}", "--config.optimizer.schedule=wsd", override]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("growjax train: "), err
  assert message in err, err
  assert not (tmp_path / "run").exists()           # refused before anything ran
