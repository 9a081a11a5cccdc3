"""Two processes on localhost (CPU backend, 4 fake devices each, jax.distributed with a
local coordinator) run a whole grow run with an interruption and resume, and match a
single-process run with the same global batch and mesh size."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from growjax import stages
from test_stages import grow_config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, data_dir):
  cfg = grow_config()
  cfg.mesh.fsdp = -1
  cfg.growth.small_mesh.data = 1
  cfg.growth.small_mesh.fsdp = -1
  single = stages.run(cfg, str(tmp_path / "single"))

  address = f"127.0.0.1:{_free_port()}"
  out = tmp_path / "multi.json"
  worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
  env = dict(os.environ, GROWJAX_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
  procs = [subprocess.Popen([sys.executable, worker, address, str(i), "2",
                             str(tmp_path / "multi"), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  multi = json.loads(out.read_text())
  for stage in ("small", "large"):
    steps = sorted(single[stage]["loss"])
    assert sorted(int(k) for k in multi[stage]) == steps
    np.testing.assert_allclose([multi[stage][str(s)] for s in steps],
                               [single[stage]["loss"][s] for s in steps], rtol=1e-5)
  # Only process 0 logs progress lines.
  assert "step 1/" in logs[0] and "step 1/" not in logs[1]
