"""`configs/grow.py:recipe=late` (the late single expansion, arXiv 2511.04981): a 1-layer
model trains for most of the run and is expanded once to the 8-layer target, by copy or
by zero-initialised new layers, under WSD with the expansion in the stable phase; the
whole run's FLOPs equal the scratch run's within 1%, by construction. Run end to end at
toy size through the console entry point."""

import json
import os

import pytest

from growjax import cli
from growjax.growth import budget
from growjax.model import ModelConfig
from tiny import ROOT

SCRATCH_STEPS = 12


def _last_row(path):
  rows = [json.loads(line) for line in open(path)]
  return [r for r in rows if "loss" in r][-1]


@pytest.mark.parametrize("expand", ["copy", "zero"])
def test_late_expansion_runs_end_to_end_at_the_scratch_runs_flops(expand, tmp_path,
                                                                  capsys, data_dir):
  spec = f"{ROOT}/configs/grow.py:recipe=late,expand={expand},scratch_steps={SCRATCH_STEPS}"
  workdir = tmp_path / "late"
  assert cli.main(["growjax", "train", f"--config={spec}", f"--workdir={workdir}",
                   "--config.metrics.tensorboard=False"]) == 0, capsys.readouterr().err
  from growjax.config import parse_arg  # noqa: F401 - the recipe's own config, read back
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("grow_cfg", f"{ROOT}/configs/grow.py")
  grow_cfg = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(grow_cfg)
  cfg = grow_cfg.get_config(f"recipe=late,expand={expand},scratch_steps={SCRATCH_STEPS}")
  large = ModelConfig.from_config(cfg.model)
  small = ModelConfig.from_config(cfg.growth.small_model)
  assert small.num_layers == 1 and large.num_layers == 8
  # Most of the run on the shallow model; the expansion in WSD's stable phase.
  small_steps, steps = cfg.growth.small_steps, cfg.train.steps
  assert small_steps / steps >= 0.75
  o = cfg.optimizer
  assert o.schedule == "wsd" and small_steps < steps - round(steps * o.decay_fraction)
  small_row = _last_row(os.path.join(workdir, "small", "metrics.jsonl"))
  large_row = _last_row(os.path.join(workdir, "large", "metrics.jsonl"))
  assert small_row["step"] == small_steps and large_row["step"] == steps
  assert small_row["lr"] == pytest.approx(o.peak_lr)          # stable at the expansion
  tokens = cfg.train.global_batch_size * cfg.data.seq_len
  scratch = SCRATCH_STEPS * tokens * large.flops_per_token(cfg.data.seq_len)
  assert large_row["flops"] == pytest.approx(scratch, rel=0.01)
  assert large_row["flops"] <= scratch                          # never more than scratch
  assert budget.late_expansion_steps(large, small, cfg.data.seq_len, SCRATCH_STEPS,
                                     0.8) == (small_steps, steps)


def test_a_bad_expand_is_one_line(tmp_path, capsys):
  argv = ["growjax", "train", f"--config={ROOT}/configs/grow.py:recipe=late,expand=grow",
          f"--workdir={tmp_path / 'x'}"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "expand='grow' is not one of copy, zero" in err
