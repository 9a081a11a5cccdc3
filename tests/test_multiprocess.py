"""Several processes on localhost (CPU backend, jax.distributed with a local coordinator):
what each process holds, what each does on SIGTERM, and that they agree on the stage,
checked directly, besides losses equal to one process's."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import data
from growjax.growth import stages
from growjax.train import state as state_lib
from growjax import train
from tiny import free_port, grow_config, tiny_config

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _start(logdir, data_dir, spec, nproc=2):
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, GROWJAX_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")  # the worker
  logdir.mkdir(parents=True, exist_ok=True)
  logs = [open(logdir / f"log.{i}", "w+") for i in range(nproc)]
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


def _run(logdir, data_dir, spec, nproc=2):
  return _finish(*_start(logdir, data_dir, spec, nproc), spec)


@pytest.mark.slow
def test_grow_run_two_processes_match_one_and_agree_on_the_stage(tmp_path, data_dir):
  """A whole grow run over 2 x 4 devices, stopped and resumed, equals one process; on
  resume, process 1 is shown a filesystem where every stage looks done, and follows
  process 0's view instead of deadlocking."""
  cfg = grow_config()
  cfg.mesh.fsdp = -1
  cfg.growth.small_mesh.data = 1
  cfg.growth.small_mesh.fsdp = -1
  spec = {"devices": 4, "out": str(tmp_path / "out"),
          "scenarios": {"grow": {"workdir": str(tmp_path / "multi")}}}
  data.prepare_inline(cfg.data)   # once, here, not raced by the processes started next
  procs, logs = _start(tmp_path, data_dir, spec)
  single = stages.run(cfg, str(tmp_path / "single"))   # while the workers run
  outs, texts = _finish(procs, logs, spec)
  multi = outs[0]["grow"]
  for stage in ("small", "large"):
    steps = sorted(single[stage]["loss"])
    assert sorted(int(k) for k in multi[stage]) == steps
    np.testing.assert_allclose([multi[stage][str(s)] for s in steps],
                               [single[stage]["loss"][s] for s in steps], rtol=1e-5)
  # Only process 0 logs progress lines.
  assert "step 1/" in texts[0] and "step 1/" not in texts[1]


MESHES = [{"tensor": 2}, {"fsdp": 2}]
SIGTERM_STEPS = 150
FP8_ARGS = {"mesh": {"fsdp": 2}, "steps": 4, "checkpoint_every": 4}


def _single(mesh, steps, workdir, **train_kw):
  """One process on 2 devices; the decay horizon of the SIGTERM run, so the fsdp=2 mesh
  run and that run compile one step function."""
  cfg = tiny_config(**mesh)
  cfg.train.steps, cfg.train.eval_every = steps, 0
  cfg.train.update(train_kw)
  cfg.optimizer.decay_steps = SIGTERM_STEPS
  return train.train(cfg, workdir, devices=jax.devices()[:2])["loss"]


def _fp8_single(workdir):
  """The delayed-FP8 scenario in one process on 2 devices: losses and histories."""
  cfg = tiny_config(**FP8_ARGS["mesh"])
  cfg.train.steps, cfg.train.checkpoint_every = FP8_ARGS["steps"], FP8_ARGS["checkpoint_every"]
  cfg.train.eval_every = 0
  cfg.model.matmul_precision, cfg.model.fp8_scaling = "fp8", "delayed"
  devices = jax.devices()[:2]
  loss = train.train(cfg, workdir, devices=devices)["loss"]
  setup = state_lib.build(cfg, devices)
  ck = ckpt_lib.Checkpoints(f"{workdir}/checkpoints", use_async=False)
  step = ck.latest_step()
  state, _, _ = ck.restore(step, setup.abstract_state, keep_fp8_history=True)
  ck.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.fp8_history))[0]
  return loss, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, data_dir):
  """The 2 x 1-device scenarios, in two launches instead of four (each launch costs two
  interpreters, their imports and jax.distributed): the first checks the unshared
  workdir, runs the mesh scenario, then a plain run that process 1 is sent SIGTERM in;
  the second resumes that run while this process computes the one-process references."""
  root = tmp_path_factory.mktemp("multiprocess")
  steps = SIGTERM_STEPS
  train_args = {"mesh": {"fsdp": 2}, "steps": steps, "checkpoint_every": 1000,
                "workdir": str(root / "train")}
  spec = {"devices": 1, "out": str(root / "out"), "scenarios": {
      "unshared": {"workdir": str(root / "w")},
      "mesh": {"meshes": MESHES, "steps": 6, "decay_steps": steps,
               "workdir": str(root / "mesh")},
      "fp8_delayed": dict(FP8_ARGS, workdir=str(root / "fp8")),
      "train": train_args}}
  data.prepare_inline(tiny_config().data)   # once, here, not raced by the two processes
  procs, logs = _start(root / "first", data_dir, spec)
  deadline = time.time() + 360   # the scenarios before "train" run first
  while time.time() < deadline:
    logs[0].seek(0)
    if f"step 8/{steps}" in logs[0].read():
      break
    assert all(p.poll() is None for p in procs), "a worker exited before the signal"
    time.sleep(0.2)
  else:
    pytest.fail("the run never reached step 8")
  procs[1].send_signal(signal.SIGTERM)
  first, texts = _finish(procs, logs, spec)
  stopped_step = ckpt_lib.latest_complete_step(train_args["workdir"])

  resume = {"devices": 1, "out": str(root / "resumed"), "scenarios": {"train": train_args}}
  procs, logs = _start(root / "second", data_dir, resume)
  singles = [_single(mesh, 6, str(root / f"single{i}")) for i, mesh in enumerate(MESHES)]
  straight = _single({"fsdp": 2}, steps, str(root / "straight"), checkpoint_every=1000)
  fp8_single = _fp8_single(str(root / "fp8_single"))
  resumed, resumed_texts = _finish(procs, logs, resume)
  return dict(root=root, first=first, texts=texts, stopped_step=stopped_step,
              resumed=[o["train"] for o in resumed], resumed_texts=resumed_texts,
              singles=singles, straight=straight, fp8_single=fp8_single)


@pytest.mark.slow
def test_meshes_spanning_processes_get_the_rows_their_sharding_names(launched):
  """One device per process, the mesh axis across the processes. With tensor=2 both
  processes hold the whole global batch (rows replicated over tensor); with fsdp=2
  each holds its half. Either way the global batch is (8, T), every device holds
  the rows its sharding index names, and the losses equal one process's."""
  outs = [o["mesh"] for o in launched["first"]]
  for i, mesh in enumerate(MESHES):
    cfg = tiny_config(**mesh)
    single = launched["singles"][i]
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
    steps = sorted(single)
    assert steps == list(range(1, 7))
    np.testing.assert_allclose([got[0]["loss"][str(s)] for s in steps],
                               [single[s] for s in steps], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(launched):
  """SIGTERM to process 1 only: JAX's preemption service agrees one step, both
  processes save it and exit 0, and the resumed run equals an uninterrupted one."""
  steps = SIGTERM_STEPS
  outs = [o["train"] for o in launched["first"]]
  stopped = [o["stopped_at"] for o in outs]
  assert stopped[0] == stopped[1] and stopped[0] is not None and 8 <= stopped[0] < steps
  assert launched["stopped_step"] == stopped[0]
  assert f"stopping at step {stopped[0]}: checkpoint saved" in launched["texts"][0]

  resumed = launched["resumed"]
  assert "resumed from" in launched["resumed_texts"][0]
  straight = launched["straight"]
  got = {**{int(k): v for k, v in outs[0]["loss"].items()},
         **{int(k): v for k, v in resumed[0]["loss"].items()}}
  assert sorted(got) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in range(1, steps + 1)],
                             [straight[s] for s in range(1, steps + 1)], rtol=1e-5)


@pytest.mark.slow
def test_a_workdir_the_processes_do_not_share_is_refused(launched):
  for out in launched["first"]:
    assert "is not shared: processes [1]" in out["unshared"]["error"]
  assert not list((launched["root"] / "w" / "p0").iterdir())  # the marker is removed


@pytest.mark.slow
def test_delayed_fp8_histories_are_the_same_on_every_process(launched):
  """Delayed FP8 over 2 processes: both calibrate at the first step and hold identical
  copies of the replicated amax histories, which match one process's run on the same
  mesh (activations' amaxes to float rounding, gradients' to fp8 rounding), as do the
  losses."""
  outs = [o["fp8_delayed"] for o in launched["first"]]
  assert outs[0]["history"] == outs[1]["history"]       # bit for bit, every process
  assert sum("fp8: amax histories calibrated" in t for t in launched["texts"]) == 1  # proc 0 logs
  single_loss, single_hist = launched["fp8_single"]
  assert set(outs[0]["history"]) == set(single_hist) and len(single_hist) == 11
  for key, value in single_hist.items():
    got = np.array(outs[0]["history"][key])
    assert got.shape == value.shape == (2, 16) and (got[:, :5] > 0).all()  # calibration + 4
    np.testing.assert_allclose(got, value, rtol=1e-5 if key.endswith("_x']") else 5e-2)
  steps = sorted(single_loss)
  np.testing.assert_allclose([outs[0]["loss"][str(s)] for s in steps],
                             [single_loss[s] for s in steps], rtol=1e-4)
