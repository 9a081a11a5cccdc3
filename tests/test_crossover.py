"""Where growth stops paying: the crossover fit on synthetic points with a known
crossover, the sweep's per-run tokens per parameter, and `plan --sweep`'s warning
through the console."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from growjax.growth import law
from growjax.growth.study import analysis


def test_fit_recovers_a_known_crossover():
  x = np.array([2.0, 5.0, 10.0, 20.0, 50.0, 100.0])
  saving = 0.4 - 0.1 * np.log(x)            # zero at x* = exp(4) = 54.6
  fit = law.fit_crossover(x, saving)
  assert fit.crossover == pytest.approx(math.exp(4.0), rel=1e-9)
  assert fit.residual_rms < 1e-12
  noisy = saving + np.random.default_rng(0).normal(0, 0.01, len(x))
  assert law.fit_crossover(x, noisy).crossover == pytest.approx(math.exp(4.0), rel=0.25)


def test_no_crossover_when_savings_do_not_fall():
  fit = law.fit_crossover([1, 10, 100], [0.1, 0.2, 0.3])
  assert fit.crossover is None and fit.b > 0
  with pytest.raises(ValueError, match="two or more small-stage lengths"):
    law.fit_crossover([5, 5], [0.1, 0.2])


def test_rows_that_never_reached_count_as_scratch_winning():
  rows = [{"small_tokens_per_param": 1.0, "reached": True, "flops_saved": 0.3},
          {"small_tokens_per_param": 10.0, "reached": True, "flops_saved": 0.1},
          {"small_tokens_per_param": 100.0, "reached": False, "flops_saved": None},
          {"g": None}]
  fit = analysis.crossover(rows)
  assert fit["num_points"] == 3 and fit["b"] < 0 and 1 < fit["crossover"] < 100


def _summary(tmp_path, crossover):
  (tmp_path / "sweep_summary.json").write_text(json.dumps({"crossover": crossover}))
  return str(tmp_path)


def test_plan_warns_past_the_measured_crossover(tmp_path):
  sweep = _summary(tmp_path, {"a": 1.0, "b": -0.25, "crossover": 5.0, "num_points": 4,
                              "residual_rms": 0.0})
  r = subprocess.run([sys.executable, "-m", "growjax", "plan", "--params", "1e8",
                      "--tokens", "1e11", "--sweep", sweep], capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 0, r.stderr
  assert "WARNING" in r.stdout and "past the crossover 5" in r.stdout, r.stdout
  r = subprocess.run([sys.executable, "-m", "growjax", "plan", "--params", "1e8",
                      "--tokens", "1e11", "--sweep", str(tmp_path / "nowhere")],
                     capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 2 and "no sweep_summary.json there" in r.stderr, r.stderr
