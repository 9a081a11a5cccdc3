"""Never lose a run: damaged checkpoints are set aside (never deleted) and the newest
intact step resumed (or refused on request); `growjax grow --to` never deletes another
run's files and a finished grow reruns as a no-op; a full disk keeps the last good
checkpoint and says so in one line; a workdir of another model shape is one line."""

import errno
import os
import shutil
import types

import orbax.checkpoint as ocp
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.train import state as state_lib
from growjax import train
from tiny import console_config, damage_checkpoint

CONFIG_FILE = """from tiny import console_config
def get_config(arg=None):
  c = console_config()
  c.model.num_layers = {layers}
  return c
"""


def _files(root):
  return {os.path.relpath(os.path.join(r, f), root): os.path.getsize(os.path.join(r, f))
          for r, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
  """A 2-layer tiny run of 8 steps: complete checkpoints at steps 4 and 8."""
  workdir = tmp_path_factory.mktemp("run")
  train.train(console_config(), str(workdir))
  assert {4, 8} <= set(ckpt_lib.Checkpoints(str(workdir / "checkpoints")).complete_steps())
  return workdir


def _copy(run_dir, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(run_dir, dst)
  return dst


def _restore(workdir, cfg):
  setup = state_lib.build(cfg)
  checkpoints = ckpt_lib.Checkpoints(str(workdir / "checkpoints"), use_async=False)
  texts, seen = [], {}
  writer = types.SimpleNamespace(text=texts.append)
  data_iter = types.SimpleNamespace(set_state=lambda s: seen.update(data=s))
  try:
    state, _ = train.restore_or_init(setup, checkpoints, data_iter, writer)
  finally:
    checkpoints.close()
  return int(state.step), texts, seen.get("data")


@pytest.mark.parametrize("kind", ["truncated_array", "empty_array", "missing_array",
                                  "truncated_data"])
def test_damaged_latest_step_is_set_aside_and_the_previous_resumed(kind, run_dir, tmp_path):
  workdir = _copy(run_dir, tmp_path)
  step8 = workdir / "checkpoints" / "8"
  damaged = damage_checkpoint(step8, kind)
  before = _files(step8)
  step, texts, data_state = _restore(workdir, console_config())
  assert step == 4 and data_state
  [warning] = [t for t in texts if t.startswith("WARNING")]
  assert "step 8 is damaged" in warning and "resuming from step 4" in warning, warning
  assert str(damaged) in warning, warning   # the file manifest names the file
  aside = workdir / "checkpoints" / "8.damaged-1"
  assert aside.is_dir() and _files(aside) == before and not step8.exists()


def test_refuse_mode_names_the_step_the_file_and_the_flag(run_dir, tmp_path):
  workdir = _copy(run_dir, tmp_path)
  damaged = damage_checkpoint(workdir / "checkpoints" / "8", "missing_array")
  cfg = console_config()
  cfg.train.damaged_checkpoint = "refuse"
  with pytest.raises(ValueError) as e:
    _restore(workdir, cfg)
  msg = str(e.value)
  assert "step 8" in msg and str(damaged) in msg and "damaged_checkpoint" in msg
  assert (workdir / "checkpoints" / "8").is_dir()   # untouched


def test_existing_checkpoints_win_over_init_from_and_say_so(run_dir, tmp_path):
  workdir = _copy(run_dir, tmp_path)
  cfg = console_config()
  cfg.train.init_from = str(run_dir)
  step, texts, _ = _restore(workdir, cfg)
  assert step == 8
  assert any(t.startswith(f"resuming {workdir}/checkpoints/8; config.train.init_from=") and
             "is ignored because this workdir already has checkpoints" in t for t in texts)


def _cli(monkeypatch, capsys, *args):
  monkeypatch.setattr("sys.argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def test_workdir_of_another_model_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
  config = tmp_path / "three.py"
  config.write_text(CONFIG_FILE.format(layers=3))
  code, _, err = _cli(monkeypatch, capsys, "train", f"--config={config}",
                      f"--workdir={run_dir}")
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert "num_layers=2" in err and "num_layers=3" in err and "--workdir" in err
  assert "init_from" in err


def test_disk_full_keeps_the_last_checkpoint_and_says_so_in_one_line(
    run_dir, tmp_path, monkeypatch, capsys):
  config = tmp_path / "two.py"
  config.write_text(CONFIG_FILE.format(layers=2))
  workdir = tmp_path / "full"
  save = ocp.CheckpointManager.save

  def full_disk(self, step, *a, **kw):
    if step >= 8:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *a, **kw)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  code, _, err = _cli(monkeypatch, capsys, "train", f"--config={config}",
                      f"--workdir={workdir}")
  assert code == 1 and len(err.strip().splitlines()) == 1, err
  assert f"no space left on the device saving step 8 to {workdir}/checkpoints" in err, err
  assert "free" in err and "needs about" in err and "config.train.keep_checkpoints" in err
  assert "step 4, is kept" in err
  assert 4 in ckpt_lib.Checkpoints(str(workdir / "checkpoints")).complete_steps()


def _grow(monkeypatch, capsys, source, out, config):
  return _cli(monkeypatch, capsys, "grow", f"--from={source}", f"--to={out}",
              f"--config={config}", "--method=stack")


def test_grow_never_deletes_and_a_finished_grow_is_a_no_op(run_dir, tmp_path, monkeypatch,
                                                           capsys):
  config = tmp_path / "four.py"
  config.write_text(CONFIG_FILE.format(layers=4))
  other = _copy(run_dir, tmp_path) / "checkpoints"
  before = _files(other)
  code, _, err = _grow(monkeypatch, capsys, run_dir, other, config)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert f"--to={other} holds another run's checkpoints" in err
  assert "choose an empty or new directory" in err
  assert _files(other) == before

  out = tmp_path / "grown"
  assert _grow(monkeypatch, capsys, run_dir, out, config)[0] == 0
  grown = _files(out)
  code, stdout, err = _grow(monkeypatch, capsys, run_dir, out, config)
  assert code == 0 and "already grown, nothing to do" in stdout and not err
  assert _files(out) == grown

  # An unfinished attempt of the same grow (its marker and an orbax tmp dir) is redone.
  again = tmp_path / "again"
  (again / "8.orbax-checkpoint-tmp-1").mkdir(parents=True)
  shutil.copy(out / "growjax_grow.json", again)
  assert _grow(monkeypatch, capsys, run_dir, again, config)[0] == 0
  assert ckpt_lib.latest_complete_step(str(again)) == 8
