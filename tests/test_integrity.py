"""Damage that keeps a file's size is found (issue 26): every file of a finished step has
an xxh3 checksum and the step it was written as in `growjax_files.json`. A flipped bit in
an array file, an edited data position and two swapped step directories are each set
aside on resume through the console entry point, the newest intact step resumes, and the
losses from there equal a run that was never damaged; `growjax inspect --verify` says
which step is damaged."""

import json
import os
import shutil
import sys

import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import train
from tiny import logged_losses, tiny_config

CONFIG_FILE = """from test_integrity import config
def get_config(arg=None):
  return config()
"""


def config():
  """tiny_config on all 8 devices (the console entry point takes every device), 16 steps,
  a checkpoint every 4."""
  c = tiny_config(fsdp=-1)
  c.train.steps = 16
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """(a run stopped at step 12 with checkpoints 4, 8, 12; the lone 16-step run's losses)."""
  root = tmp_path_factory.mktemp("integrity")
  base = root / "base"
  train.train(config(), str(base), stop_after_steps=12)
  assert ckpt_lib.Checkpoints(str(base / "checkpoints")).complete_steps() == [4, 8, 12]
  lone = train.train(config(), str(root / "lone"))
  (root / "config.py").write_text(CONFIG_FILE)
  return base, lone["loss"], root / "config.py"


def _cli(monkeypatch, capsys, *argv):
  monkeypatch.setattr(sys, "argv", ["growjax", *map(str, argv)])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def _biggest_array(step_dir):
  data = step_dir / "state" / "ocdbt.process_0" / "d"
  return max(data.iterdir(), key=lambda p: p.stat().st_size)


def flip_bit(step_dir):
  f = _biggest_array(step_dir)
  with open(f, "r+b") as fh:
    fh.seek(f.stat().st_size // 2)
    byte = fh.read(1)[0]
    fh.seek(-1, 1)
    fh.write(bytes([byte ^ 0x10]))
  return f


def edit_data_position(step_dir):
  f = step_dir / "data" / "metadata"
  text = f.read_text()
  position = json.loads(text)["windows_consumed"]
  edited = text.replace(str(position), str(position + 1))
  assert len(edited) == len(text)          # the size stays: only a checksum sees it
  f.write_text(edited)
  return f


def swap_dirs(ckpts, a, b):
  os.rename(ckpts / str(a), ckpts / "tmp")
  os.rename(ckpts / str(b), ckpts / str(a))
  os.rename(ckpts / "tmp", ckpts / str(b))


@pytest.mark.parametrize("fault,resumes_at,set_aside", [
    ("bit_flip", 8, [12]),
    ("data_position", 8, [12]),
    ("swapped_dirs", 4, [12, 8]),
])
def test_damage_of_the_same_size_is_set_aside_and_the_newest_intact_step_resumes(
    runs, tmp_path, monkeypatch, capsys, fault, resumes_at, set_aside):
  base, lone_losses, config_file = runs
  workdir = tmp_path / "run"
  shutil.copytree(base, workdir)
  ckpts = workdir / "checkpoints"
  sizes = lambda: sorted(p.stat().st_size for p in ckpts.rglob("*") if p.is_file())
  before = sizes()
  if fault == "bit_flip":
    damaged = flip_bit(ckpts / "12")
  elif fault == "data_position":
    damaged = edit_data_position(ckpts / "12")
  else:
    swap_dirs(ckpts, 8, 12)
  assert sizes() == before                  # every file keeps its size

  code, out, err = _cli(monkeypatch, capsys, "inspect", "--verify", ckpts)
  assert code == 2, err
  assert "DAMAGED" in out and err.startswith("growjax inspect: ")
  assert len(err.strip().splitlines()) == 1

  code, out, err = _cli(monkeypatch, capsys, "train", "--config", config_file,
                        "--workdir", workdir)
  assert code == 0, err
  warnings = [line for line in out.splitlines() if "is damaged" in line]
  assert len(warnings) == len(set_aside), out
  for step, line in zip(set_aside, warnings):
    assert line.startswith(f"WARNING: checkpoint step {step} is damaged (")
    if fault == "bit_flip":
      assert f"{damaged}: changed since it was written (xxh3 " in line
    elif fault == "data_position":
      assert f"{damaged}: changed since it was written" in line
    else:
      assert "as written, not step" in line and "moved or renamed" in line
  assert f"resumed from {ckpts}/{resumes_at}" in out
  for step in set_aside:
    assert (ckpts / f"{step}.damaged-1").is_dir()            # set aside, never deleted
  # From the step it resumed at, exactly the run that was never damaged.
  losses = logged_losses(workdir)
  assert {s: losses[s] for s in range(resumes_at + 1, 17)} == {
      s: lone_losses[s] for s in range(resumes_at + 1, 17)}


def test_inspect_verify_reports_every_step_intact(runs, monkeypatch, capsys):
  base, _, _ = runs
  code, out, err = _cli(monkeypatch, capsys, "inspect", "--verify", base)
  assert code == 0, err
  for step in (4, 8, 12):
    assert f"verify step {step}: intact (sizes and xxh3 checksums match)" in out


def test_manifest_records_checksums_and_its_step(runs):
  base, _, _ = runs
  step_dir = base / "checkpoints" / "8"
  manifest = ckpt_lib.read_manifest(step_dir)
  assert manifest["step"] == 8
  files = {os.path.relpath(os.path.join(r, f), step_dir)
           for r, _, fs in os.walk(step_dir) for f in fs} - {ckpt_lib.FILES}
  assert set(manifest["files"]) == files
  for name, entry in manifest["files"].items():
    assert entry["size"] == os.path.getsize(step_dir / name)
    assert entry["xxh3"] == ckpt_lib.file_digest(step_dir / name)
  assert json.loads((step_dir / "meta" / "metadata").read_text())["saved_as_step"] == 8


def test_a_manifest_without_checksums_still_verifies_sizes(runs, tmp_path):
  """Checkpoints written before checksums keep resuming (sizes checked as before)."""
  base, _, _ = runs
  step_dir = tmp_path / "8"
  shutil.copytree(base / "checkpoints" / "8", step_dir)
  manifest = ckpt_lib.read_manifest(step_dir)
  (step_dir / ckpt_lib.FILES).write_text(json.dumps(
      {name: e["size"] for name, e in manifest["files"].items()}))
  assert ckpt_lib.verify_step(step_dir) is None
  with open(_biggest_array(step_dir), "r+b") as f:
    f.truncate(10)
  assert "(truncated)" in ckpt_lib.verify_step(step_dir)[1]


def test_keep_checkpoints_never_rotates_out_the_newest_known_good(tmp_path):
  import jax.numpy as jnp
  checkpoints = ckpt_lib.Checkpoints(str(tmp_path / "c"), keep=1, use_async=False)
  state = {"w": jnp.ones(4)}
  checkpoints.save(1, state, {}, {})
  checkpoints.mark_good(1)
  checkpoints.save(2, state, {}, {})
  checkpoints.save(3, state, {}, {})
  assert checkpoints.complete_steps() == [1, 3]
  checkpoints.mark_good(3)
  checkpoints.save(4, state, {}, {})
  assert checkpoints.complete_steps() == [3, 4]
  checkpoints.close()
