"""Several processes on localhost (CPU backend, jax.distributed with a local coordinator):
what each process holds, what each does on SIGTERM, and that they agree on the stage,
checked directly, besides losses equal to one process's."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import data
from growjax.growth import stages
from growjax import train
from test_stages import grow_config
from test_train import tiny_config

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp_path, data_dir, spec, nproc=2):
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, GROWJAX_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  logs = [open(tmp_path / f"log.{i}", "w+") for i in range(nproc)]
  procs = [subprocess.Popen([sys.executable, WORKER, address, str(i), str(nproc),
                             json.dumps(spec)], env=env, stdout=logs[i],
                            stderr=subprocess.STDOUT, text=True)
           for i in range(nproc)]
  return procs, logs


def _finish(procs, logs, spec, timeout=300):
  for p in procs:
    p.wait(timeout=timeout)
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  for p, text in zip(procs, texts):
    assert p.returncode == 0, text[-4000:]
  outs = [json.loads(open(f"{spec['out']}.{i}").read()) for i in range(len(procs))]
  return outs, texts


def _run(tmp_path, data_dir, spec, nproc=2):
  return _finish(*_start(tmp_path, data_dir, spec, nproc), spec)


def test_grow_run_two_processes_match_one_and_agree_on_the_stage(tmp_path, data_dir):
  """A whole grow run over 2 x 4 devices, stopped and resumed, equals one process; on
  resume, process 1 is shown a filesystem where every stage looks done, and follows
  process 0's view instead of deadlocking."""
  cfg = grow_config()
  cfg.mesh.fsdp = -1
  cfg.growth.small_mesh.data = 1
  cfg.growth.small_mesh.fsdp = -1
  single = stages.run(cfg, str(tmp_path / "single"))
  spec = {"scenario": "grow", "devices": 4, "workdir": str(tmp_path / "multi"),
          "out": str(tmp_path / "out")}
  (multi, _), texts = _run(tmp_path, data_dir, spec)
  for stage in ("small", "large"):
    steps = sorted(single[stage]["loss"])
    assert sorted(int(k) for k in multi[stage]) == steps
    np.testing.assert_allclose([multi[stage][str(s)] for s in steps],
                               [single[stage]["loss"][s] for s in steps], rtol=1e-5)
  # Only process 0 logs progress lines.
  assert "step 1/" in texts[0] and "step 1/" not in texts[1]


def test_meshes_spanning_processes_get_the_rows_their_sharding_names(tmp_path, data_dir):
  """One device per process, the mesh axis across the processes. With tensor=2 both
  processes hold the whole global batch (rows replicated over tensor); with fsdp=2
  each holds its half. Either way the global batch is (8, T), every device holds
  the rows its sharding index names, and the losses equal one process's."""
  meshes = [{"tensor": 2}, {"fsdp": 2}]
  spec = {"scenario": "mesh", "devices": 1, "meshes": meshes, "steps": 6,
          "workdir": str(tmp_path / "multi"), "out": str(tmp_path / "out")}
  outs, _ = _run(tmp_path, data_dir, spec)
  for i, mesh in enumerate(meshes):
    cfg = tiny_config(**mesh)
    cfg.train.steps, cfg.train.eval_every = 6, 0
    single = train.train(cfg, str(tmp_path / f"single{i}"), devices=jax.devices()[:2])
    whole = next(data.train_iterator(cfg.data, global_batch_size=8, seed=cfg.seed))["inputs"]
    got = [out[str(i)] for out in outs]
    for out in got:
      assert out["global_shape"] == [8, cfg.data.seq_len]
      for shard in out["shards"]:
        np.testing.assert_array_equal(np.array(shard["inputs"]), whole[shard["rows"]])
    if "tensor" in mesh:
      assert got[0]["rows"] == got[1]["rows"] == list(range(8))
    else:
      assert sorted(got[0]["rows"] + got[1]["rows"]) == list(range(8))
      assert not set(got[0]["rows"]) & set(got[1]["rows"])
    steps = sorted(single["loss"])
    np.testing.assert_allclose([got[0]["loss"][str(s)] for s in steps],
                               [single["loss"][s] for s in steps], rtol=1e-5)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, data_dir):
  """SIGTERM to process 1 only: JAX's preemption service agrees one step, both
  processes save it and exit 0, and the resumed run equals an uninterrupted one."""
  steps = 150
  spec = {"scenario": "train", "devices": 1, "mesh": {"fsdp": 2}, "steps": steps,
          "checkpoint_every": 1000, "workdir": str(tmp_path / "multi"),
          "out": str(tmp_path / "out")}
  procs, logs = _start(tmp_path, data_dir, spec)
  deadline = time.time() + 240
  while time.time() < deadline:
    logs[0].seek(0)
    if "step 8/" in logs[0].read():
      break
    assert all(p.poll() is None for p in procs), "a worker exited before the signal"
    time.sleep(0.2)
  else:
    pytest.fail("the run never reached step 8")
  procs[1].send_signal(signal.SIGTERM)
  outs, texts = _finish(procs, logs, spec)
  stopped = [o["stopped_at"] for o in outs]
  assert stopped[0] == stopped[1] and stopped[0] is not None and 8 <= stopped[0] < steps
  assert ckpt_lib.latest_complete_step(spec["workdir"]) == stopped[0]
  assert f"stopping at step {stopped[0]}: checkpoint saved" in texts[0]

  resumed, _ = _run(tmp_path, data_dir, spec)
  assert "resumed from" in open(tmp_path / "log.0").read()
  cfg = tiny_config(fsdp=2)
  cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_every = steps, 0, 1000
  straight = train.train(cfg, str(tmp_path / "straight"), devices=jax.devices()[:2])["loss"]
  got = {**{int(k): v for k, v in outs[0]["loss"].items()},
         **{int(k): v for k, v in resumed[0]["loss"].items()}}
  assert sorted(got) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in range(1, steps + 1)],
                             [straight[s] for s in range(1, steps + 1)], rtol=1e-5)


def test_a_workdir_the_processes_do_not_share_is_refused(tmp_path, data_dir):
  spec = {"scenario": "unshared", "devices": 1, "workdir": str(tmp_path / "w"),
          "out": str(tmp_path / "out")}
  outs, _ = _run(tmp_path, data_dir, spec)
  for out in outs:
    assert "is not shared: processes [1]" in out["error"]
  assert not list((tmp_path / "w" / "p0").iterdir())  # the marker is removed
