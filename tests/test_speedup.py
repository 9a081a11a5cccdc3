"""The speedup tool on synthetic runs with known answers (no training)."""

import json
import os
import sys

import numpy as np
import pytest

from growjax import cli
from growjax.growth import speedup

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(path, points, extra_steps=()):
  """points: [(step, flops, eval_loss)]; extra_steps: train-only records (no eval)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "a") as f:
    for step, flops, loss in points:
      f.write(json.dumps({"step": step, "loss": loss + 0.1, "eval_loss": loss,
                          "flops": flops}) + "\n")
    for step, flops in extra_steps:
      f.write(json.dumps({"step": step, "loss": 9.0, "eval_loss": None, "flops": flops}) + "\n")
  return str(path)


@pytest.fixture
def runs(tmp_path):
  # Scratch: loss falls 4 -> 2 linearly over 0..100 FLOPs (final 2.0 at 100).
  scratch = write_run(tmp_path / "scratch", [(i, 10.0 * i, 4.0 - 0.2 * i) for i in range(11)],
                      extra_steps=[(11, 105.0)])
  # Grown: small stage to 20 FLOPs, large stage from 20 reaching 2.0 at exactly 60 FLOPs.
  grown = tmp_path / "grown"
  write_run(grown / "small", [(1, 10.0, 3.5), (2, 20.0, 3.2)])
  write_run(grown / "large", [(3, 30.0, 3.0), (4, 50.0, 2.2), (5, 70.0, 1.8), (6, 100.0, 1.6)])
  return scratch, str(grown)


def test_interpolation_is_exact():
  flops, loss = np.array([0.0, 10.0, 20.0]), np.array([3.0, 2.0, 1.0])
  assert speedup.flops_to_reach(flops, loss, 1.5) == pytest.approx(15.0)
  assert speedup.flops_to_reach(flops, loss, 2.0) == pytest.approx(10.0)
  assert speedup.flops_to_reach(flops, loss, 5.0) == 0.0        # already there
  assert speedup.flops_to_reach(flops, loss, 0.5) is None       # never


def test_speedup_as_the_paper_defines_it(runs):
  scratch, grown = runs
  r = speedup.compare(scratch, grown)
  assert r["target_loss"] == pytest.approx(2.0)        # the scratch run's final loss
  assert r["scratch_flops"] == pytest.approx(100.0)
  assert r["grown_flops"] == pytest.approx(60.0)       # 50 + (2.2 - 2.0) / 0.4 * 20
  assert r["speedup"] == pytest.approx(100 / 60 - 1)
  assert r["flops_saved"] == pytest.approx(0.4)
  r = speedup.compare(scratch, grown, target_loss=3.0)
  assert r["scratch_flops"] == pytest.approx(50.0) and r["grown_flops"] == pytest.approx(30.0)


def test_paper_7b_example():
  """Scratch needs 300B tokens, G_stack 194B to reach the same loss: 54.6% speedup."""
  scratch = np.array([0.0, 300.0]), np.array([3.0, 2.0])
  grown = np.array([0.0, 194.0]), np.array([3.0, 2.0])
  f_scratch = speedup.flops_to_reach(*scratch, 2.0)
  f_grown = speedup.flops_to_reach(*grown, 2.0)
  assert f_scratch / f_grown - 1 == pytest.approx(0.546, abs=5e-4)


def test_grow_run_curve_joins_stages_and_last_record_of_a_step_wins(tmp_path):
  run = tmp_path / "g"
  write_run(run / "small", [(1, 1.0, 5.0), (2, 2.0, 4.0), (3, 2.5, 3.95)])
  write_run(run / "small", [(2, 2.0, 3.9)],            # resumed: step 2 logged again,
            extra_steps=[(3, 2.5)])                     # step 3 now without evaluation
  write_run(run / "large", [(4, 3.0, 3.5), (5, 4.0, float("nan"))])  # NaN: dropped
  flops, loss = speedup.load_curve(str(run))
  np.testing.assert_array_equal(flops, [1.0, 2.0, 3.0])
  np.testing.assert_array_equal(loss, [5.0, 3.9, 3.5])
  # A metrics.jsonl path or a plain run dir read the same way.
  np.testing.assert_array_equal(speedup.load_curve(str(run / "large" / "metrics.jsonl"))[0], [3.0])
  np.testing.assert_array_equal(speedup.load_curve(str(run / "small"))[1], [5.0, 3.9])


def test_clear_errors(tmp_path, runs):
  scratch, grown = runs
  with pytest.raises(ValueError, match="holds no metrics.jsonl"):
    speedup.load_curve(str(tmp_path / "missing"))
  no_eval = write_run(tmp_path / "no_eval", [], extra_steps=[(1, 1.0)])
  with pytest.raises(ValueError, match="eval_every"):
    speedup.load_curve(no_eval)
  with pytest.raises(ValueError, match=r"scratch run .* never reaches .* \(its best is 2.0000"):
    speedup.compare(scratch, grown, target_loss=1.0)
  slow = tmp_path / "slow"
  write_run(slow / "small", [(1, 50.0, 3.0)])
  slow = write_run(slow / "large", [(2, 200.0, 2.5)]).rsplit("/", 1)[0]
  with pytest.raises(ValueError, match=r"grown run .* never reaches the target loss 2.0000 "
                     r"\(its best is 2.5000"):
    speedup.compare(scratch, slow)


def test_cli_prints_report_and_writes_png(runs, tmp_path, capsys):
  scratch, grown = runs
  out = tmp_path / "plot.png"
  assert cli.main(["growjax", "speedup", f"--scratch={scratch}", f"--grown={grown}",
                   "--target-loss=2.0", f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert "speedup                0.667 = 66.7%" in printed
  assert "FLOPs saved            40.0%" in printed
  assert out.read_bytes()[:8] == PNG
  # Defaults: target = scratch's final loss, plot in the grown run's directory.
  assert cli.main(["growjax", "speedup", "--scratch", scratch, "--grown", grown]) == 0
  assert "target loss            2.0000" in capsys.readouterr().out
  assert open(os.path.join(grown, "speedup.png"), "rb").read(8) == PNG
  assert cli.main(["growjax", "speedup", f"--scratch={scratch}", f"--grown={grown}",
                   "--target_loss", "0.5"]) == 2
  assert "never reaches" in capsys.readouterr().err
  assert cli.main(["growjax", "speedup", f"--scratch={tmp_path}/nope", f"--grown={grown}"]) == 2
  assert "holds no metrics.jsonl" in capsys.readouterr().err
  assert cli.main(["growjax", "speedup", f"--grown={grown}"]) == 2
  assert "--scratch is required" in capsys.readouterr().err


def test_without_matplotlib_prints_the_numbers_and_skips_the_plot(runs, tmp_path,
                                                                   monkeypatch, capsys):
  scratch, grown = runs
  monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
  out = tmp_path / "p.png"
  assert cli.main(["growjax", "speedup", f"--scratch={scratch}", f"--grown={grown}",
                   f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert "speedup                0.667 = 66.7%" in printed
  assert printed.strip().splitlines()[-1] == (
      "plot skipped: matplotlib is not installed (pip install matplotlib)")
  assert not out.exists()


def _checkpoint(workdir, step=6, **model):
  from growjax import checkpoint as ckpt_lib
  shape = dict(num_layers=4, embed_dim=128, mlp_dim=384, num_heads=4, num_kv_heads=2,
               vocab_size=384)
  shape.update(model)
  ck = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), use_async=False)
  ck.save(step, {"w": np.zeros(2, np.float32)}, None, {"model": shape}, force=True)
  ck.wait()
  ck.close()


def test_both_runs_must_train_the_same_final_model(runs, capsys):
  scratch, grown = runs
  speedup.compare(scratch, grown)                  # no checkpoints: a note, no check
  assert "note: not checking that both runs train the same model" in capsys.readouterr().out
  _checkpoint(scratch)
  _checkpoint(os.path.join(grown, "large"))
  assert speedup.compare(scratch, grown)["speedup"] == pytest.approx(100 / 60 - 1)
  _checkpoint(os.path.join(grown, "large"), step=8, num_layers=8)     # a newer step, deeper
  with pytest.raises(ValueError, match=r"different models: .*num_layers=4.*num_layers=8"):
    speedup.compare(scratch, grown)


def test_a_grown_run_must_count_its_small_stage(runs, tmp_path):
  """A large stage logged without the small stage's FLOPs would overstate the speedup."""
  scratch, _ = runs
  bad = tmp_path / "bad"
  write_run(bad / "small", [(1, 10.0, 3.5), (2, 20.0, 3.2)])
  write_run(bad / "large", [(3, 10.0, 3.0), (4, 30.0, 2.2), (5, 50.0, 1.8)])
  with pytest.raises(ValueError, match="leave out the small stage"):
    speedup.compare(scratch, str(bad))
  single = write_run(tmp_path / "single", [(3, 30.0, 3.0), (4, 50.0, 1.9)])
  with pytest.raises(ValueError, match="carry no small stage's FLOPs"):
    speedup.compare(scratch, single)
  with open(os.path.join(single, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 5, "loss": 1.0, "eval_loss": 1.8, "flops": 70.0,
                        "small_stage_flops": 20.0}) + "\n")
  assert speedup.compare(scratch, single)["grown_flops"] > 0
