"""kill -9 at scheduled points (issue 15): a grow run SIGKILLed by the test hook
`growjax.faults.maybe_kill` ($GROWJAX_FAULT), then rerun without it, must finish with
the same train losses, bit for bit, as a run never interrupted, and both stages'
final checkpoints. Points: growjax/faults.py's docstring."""

import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SMALL_STEPS = 12, 4
CONFIG = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("grow_config", {os.path.join(ROOT, "configs", "grow.py")!r})
_grow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_grow)


def get_config(arg=None):
  c = _grow.get_config("recipe=tiny,batch=8")
  c.data.seq_len = 32
  c.train.update(steps={STEPS}, log_every=1, eval_every=0, eval_batches=1,
                 checkpoint_every=2, async_checkpointing=True)
  c.growth.small_steps = {SMALL_STEPS}
  return c
"""


def _run(config, workdir, fault=None, data_dir=None):
  env = dict(os.environ)
  env.pop("GROWJAX_FAULT", None)
  if fault:
    env["GROWJAX_FAULT"] = fault
  if data_dir:
    env["GROWJAX_DATA_DIR"] = data_dir
  return subprocess.run([sys.executable, "-m", "growjax", "train", "--config", config,
                         "--workdir", str(workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _losses(workdir):
  out = {}
  for stage in ("small", "large"):
    with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
      for line in f:
        record = json.loads(line)
        out[(stage, record["step"])] = record["loss"]   # the last record of a step wins
  return out


def _final_checkpoints(workdir):
  return [os.path.isdir(os.path.join(workdir, stage, "checkpoints", str(step)))
          for stage, step in (("small", SMALL_STEPS), ("large", STEPS))]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  path = tmp_path_factory.mktemp("faults") / "grow_faults.py"
  path.write_text(CONFIG)
  return str(path)


@pytest.fixture(scope="module")
def reference(config, data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults_reference")
  done = _run(config, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  losses = _losses(workdir)
  assert sorted(step for _, step in losses) == list(range(1, STEPS + 1))
  return losses


@pytest.mark.parametrize("fault", ["mid_step:3", "mid_save:4", "handoff", "mid_grow",
                                   "mid_prepare"])
def test_kill9_then_resume_is_bit_identical(fault, config, reference, data_dir, tmp_path):
  workdir = tmp_path / "run"
  fresh_data = str(tmp_path / "data") if fault.startswith("mid_prepare") else None
  killed = _run(config, workdir, fault=fault, data_dir=fresh_data)
  assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
  resumed = _run(config, workdir, data_dir=fresh_data)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _final_checkpoints(workdir) == [True, True]
  assert _losses(workdir) == reference   # floats compared exactly
