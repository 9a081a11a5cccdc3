"""What the console shows, through `python -m growjax train` as users run it (issue 26):
library noise goes to WORKDIR/growjax.log so a failure is one line; Ctrl-C saves and
exits 130, a second Ctrl-C stops at once, a signal during start-up is one line."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tiny import ROOT, damage_checkpoint, logged_losses, subprocess_env, write_console_config

NOISE = ("Traceback", "Event loop is closed", "ERROR:absl", "RuntimeError", "Warning")

# ENOSPC at step 8, with the noise orbax makes on a full disk: absl errors and a
# traceback from its threads, an exception in a callback, a library's warning, C++ on fd 2.
DISK_FULL = """
import errno, logging, os, sys, threading, warnings
import orbax.checkpoint as ocp
save = ocp.CheckpointManager.save
def full_disk(self, step, *a, **kw):
  if step >= 8:
    logging.getLogger("absl").error("NOISE absl: failed to write in background thread")
    t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()
    warnings.warn_explicit("NOISE warning", UserWarning, "orbax/x.py", 1)
    sys.unraisablehook(type("U", (), dict(exc_type=RuntimeError, exc_traceback=None,
        exc_value=RuntimeError("Event loop is closed"), object=None, err_msg=None))())
    os.write(2, b"E0000 NOISE c++: tensorstore write failed\\n")
    raise OSError(errno.ENOSPC, "No space left on device")
  return save(self, step, *a, **kw)
ocp.CheckpointManager.save = full_disk
from growjax import cli
sys.exit(cli.main(["growjax"] + sys.argv[1:]))
"""


def _train(args, data_dir, script=None, **kw):
  head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "growjax"]
  return subprocess.run(head + ["train", *args], cwd=ROOT, env=subprocess_env(data_dir),
                        capture_output=True, text=True, timeout=300, **kw)


def _start(args, data_dir, out):
  return subprocess.Popen([sys.executable, "-m", "growjax", "train", *args], cwd=ROOT,
                          env=subprocess_env(data_dir), stdout=out, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for_step(workdir, step, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before the signal"
    try:
      if max(logged_losses(workdir), default=0) >= step:
        return
    except (OSError, ValueError):
      pass
    time.sleep(0.1)
  pytest.fail(f"no step {step} logged")


def _lines(text):
  return [line for line in text.splitlines() if line.strip()]


def _no_noise(text):
  assert not [line for line in _lines(text) if any(n in line for n in NOISE)], text[-3000:]


def test_disk_full_is_one_line_and_the_noise_goes_to_the_log(tmp_path, data_dir):
  config = write_console_config(tmp_path, "full")
  workdir = tmp_path / "full"
  done = _train([f"--config={config}", f"--workdir={workdir}"], data_dir, script=DISK_FULL)
  console = done.stdout + done.stderr
  assert done.returncode == 1, console[-3000:]
  [line] = [x for x in _lines(console) if x.startswith("growjax train:")]
  assert "no space left on the device saving step 8" in line and "step 4, is kept" in line
  own = [x for x in _lines(done.stderr) if not x.startswith("inline prepare-data")]
  assert own == [line], done.stderr    # growjax's progress lines go on, to stdout
  _no_noise(console)
  assert "NOISE" not in console and "step 7/8" in done.stdout
  log = (workdir / "growjax.log").read_text()
  for noise in ("NOISE absl", "ZeroDivisionError", "NOISE warning", "Event loop is closed",
                "NOISE c++"):
    assert noise in log, log


def test_a_recovered_damaged_checkpoint_says_one_warning_and_no_traceback(tmp_path,
                                                                          data_dir):
  workdir = tmp_path / "run"
  first = _train([f"--config={write_console_config(tmp_path, 'eight', async_checkpointing=True)}",
                  f"--workdir={workdir}"], data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  damage_checkpoint(workdir / "checkpoints" / "8", "truncated_array")
  more = write_console_config(tmp_path, "twelve", steps=12, async_checkpointing=True)
  done = _train([f"--config={more}", f"--workdir={workdir}"], data_dir)
  console = done.stdout + done.stderr
  assert done.returncode == 0, console[-3000:]
  [warning] = [x for x in _lines(console) if "WARNING" in x]
  assert "step 8 is damaged" in warning and "resuming from step 4" in warning, warning
  _no_noise(console)
  assert "step 12/12" in done.stdout
  assert (workdir / "growjax.log").exists()


def test_ctrl_c_saves_exits_130_and_the_rerun_continues_the_same_losses(tmp_path,
                                                                        data_dir):
  """SIGINT while training: the loop saves the step it is at and the command exits 130
  with one line; the rerun resumes there and logs the losses an uninterrupted run logs."""
  config = write_console_config(tmp_path, "sixty", steps=60, checkpoint_every=1000, eval_every=0)
  workdir = tmp_path / "stopped"
  with open(tmp_path / "stopped.out", "w+") as out:
    proc = _start([f"--config={config}", f"--workdir={workdir}"], data_dir, out)
    _wait_for_step(workdir, 3, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    out.seek(0)
    console = out.read()
  _no_noise(console)
  [stop] = [x for x in _lines(console) if x.startswith("stopping at step")]
  step = int(stop.split()[3].rstrip(":"))
  assert stop == f"stopping at step {step}: checkpoint saved" and 3 <= step < 60
  assert _lines(console)[-1] == ("growjax train: interrupted by Ctrl-C (SIGINT): the "
                                 "checkpoint of the step above is saved — rerun the same "
                                 "command to resume")
  assert (workdir / "checkpoints" / str(step)).is_dir()
  stopped = logged_losses(workdir)
  rerun = _train([f"--config={config}", f"--workdir={workdir}"], data_dir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"steps {step}->60" in rerun.stdout
  lone = _train([f"--config={config}", f"--workdir={tmp_path / 'lone'}"], data_dir)
  assert lone.returncode == 0, lone.stderr[-3000:]
  got, want = {**stopped, **logged_losses(workdir)}, logged_losses(tmp_path / "lone")
  assert sorted(got) == sorted(want) == list(range(1, 61))
  np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-5)


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path, data_dir):
  config = write_console_config(tmp_path, "long", steps=100000, checkpoint_every=100000,
                                eval_every=0)
  workdir = tmp_path / "twice"
  with open(tmp_path / "twice.out", "w+") as out:
    proc = _start([f"--config={config}", f"--workdir={workdir}"], data_dir, out)
    _wait_for_step(workdir, 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
      proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    out.seek(0)
    console = out.read()
  _no_noise(console)
  assert "KeyboardInterrupt" not in console
  assert len([x for x in _lines(console) if x.startswith("growjax train:")]) == 1, console
  assert _lines(console)[-1].startswith("growjax train: interrupted")


def test_sigterm_during_start_up_is_one_line(tmp_path, data_dir):
  config = write_console_config(tmp_path, "start")
  workdir = tmp_path / "start"
  with open(tmp_path / "start.out", "w+") as out:
    proc = _start([f"--config={config}", f"--workdir={workdir}"], data_dir, out)
    time.sleep(1.5)   # importing jax, loading the config, building the state
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    out.seek(0)
    console = out.read()
  said = _lines(console)   # the run's first line, its workdir, if it got that far
  assert said[:-1] in ([], [f"workdir {workdir}: checkpoints, metrics.jsonl, growjax.log"])
  assert said[-1:] == [
      "growjax train: stopped by SIGTERM during start-up, before the first training "
      "step; no checkpoint was saved — rerun the same command to resume"], console
  assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
