"""One writer per workdir (issue 26): a second `growjax train` on a workdir in use is
refused in one line naming the holder and writes nothing there, while the first run's
losses and checkpoint stay a lone run's bit for bit; a run killed with -9 leaves a lease
that the rerun takes over (one warning line) and resumes exactly; a stale heartbeat is
taken over, a fresh one from another host refused; of racers exactly one wins; grow,
import-hf and prepare-data are refused while their output is held and rerun as before."""

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

from growjax import cli
from growjax.interop import hf
from growjax import lease
from growjax.interop import params_io
from test_gcs import BUCKET, gcs  # noqa: F401  (the GCS emulator fixture)
from tiny import ROOT, TESTS, logged_losses

STEPS = 8
CONFIG = f"""from tiny import tiny_config
def get_config(arg=None):
  c = tiny_config(fsdp=-1)
  c.train.steps = {STEPS}
  return c
"""
GROWN_CONFIG = CONFIG.replace("return c", "c.model.num_layers = 4\n  return c")
HOST = socket.gethostname()


def _env(data_dir, **extra):
  env = {k: v for k, v in os.environ.items() if k != "GROWJAX_FAULT"}
  env.update(GROWJAX_DATA_DIR=data_dir, **extra)
  env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return env


def _train(config, workdir, data_dir, **env):
  return subprocess.Popen([sys.executable, "-m", "growjax", "train", "--config", config,
                           "--workdir", str(workdir)], cwd=ROOT, env=_env(data_dir, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _params(workdir):
  loaded = params_io.load(str(workdir), step=STEPS)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(loaded.params)}


def _snapshot(root):
  """Every file and its mtime, but growjax.log: the console routes a command's library
  output there before the command starts (growjax/console.py), the refused one's too."""
  return {os.path.relpath(os.path.join(r, f), root): os.stat(os.path.join(r, f)).st_mtime_ns
          for r, _, fs in os.walk(root) for f in fs if f != "growjax.log"}


def _lease_path(d):
  return os.path.join(d, lease.LEASE_NAME)


def _write_lease(d, **fields):
  """A lease file as another command would have left it."""
  os.makedirs(d, exist_ok=True)
  now = time.time()
  record = {"command": "train", "host": HOST, "pid": 1, "started": now - 60,
            "heartbeat": now, "heartbeat_s": 30.0, "token": "someone-else", **fields}
  with open(_lease_path(d), "w") as f:
    json.dump(record, f)
  return record


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  path = tmp_path_factory.mktemp("lease_config") / "lease_tiny.py"
  path.write_text(CONFIG)
  return str(path)


@pytest.fixture(scope="module")
def lone(config, data_dir, tmp_path_factory):
  """A lone run through the console: its losses and final params are the reference."""
  workdir = tmp_path_factory.mktemp("lone")
  code, _, err = _finish(_train(config, workdir, data_dir))
  assert code == 0, err[-3000:]
  assert not os.path.exists(_lease_path(workdir))   # released at the end
  return workdir, logged_losses(workdir), _params(workdir)


@pytest.fixture
def live_holder():
  """A live process of this host that is not this one (the holder of a fabricated lease)."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  yield proc
  proc.kill()
  proc.wait()


def test_second_train_is_refused_and_the_first_is_a_lone_run(config, lone, data_dir,
                                                             tmp_path):
  workdir = tmp_path / "run"
  a = _train(config, workdir, data_dir)
  try:
    deadline = time.time() + 120
    while not os.path.exists(_lease_path(workdir)):   # A holds the lease, then pauses
      assert a.poll() is None and time.time() < deadline, a.stderr.read()[-3000:]
      time.sleep(0.05)
    os.kill(a.pid, signal.SIGSTOP)    # A is running (stopped: it cannot finish meanwhile)
    before = _snapshot(workdir)
    b = subprocess.run([sys.executable, "-m", "growjax", "train", "--config", config,
                        "--workdir", str(workdir)], cwd=ROOT, env=_env(data_dir),
                       capture_output=True, text=True, timeout=120)
    assert _snapshot(workdir) == before   # B wrote nothing there
  finally:
    os.kill(a.pid, signal.SIGCONT)
  code, _, err = _finish(a)
  assert code == 0, err[-3000:]
  assert b.returncode == 2, b.stderr[-3000:]
  lines = b.stderr.strip().splitlines()
  assert len(lines) == 1, b.stderr[-3000:]
  assert lines[0].startswith(
      f"growjax train: --workdir={workdir} is in use by growjax train (pid {a.pid} on host "
      f"{HOST}, started "), lines[0]
  assert lines[0].endswith("s ago) — wait for it to finish, use another --workdir, or stop "
                           "that process"), lines[0]
  _, losses, params = lone
  assert logged_losses(workdir) == losses   # floats compared exactly
  got = _params(workdir)
  assert got.keys() == params.keys()
  assert all(np.array_equal(got[k], params[k]) for k in params)
  assert not os.path.exists(_lease_path(workdir))


def test_kill9_then_the_rerun_takes_over_and_resumes_exactly(config, lone, data_dir,
                                                            tmp_path):
  workdir = tmp_path / "run"
  # SIGKILL itself at step 6 (growjax.faults): no handler runs, the lease stays behind.
  code, _, err = _finish(_train(config, workdir, data_dir, GROWJAX_FAULT="mid_step:6"))
  assert code == -signal.SIGKILL, err[-3000:]
  with open(_lease_path(workdir)) as f:
    dead = json.load(f)
  assert dead["host"] == HOST and dead["command"] == "train"
  code, _, err = _finish(_train(config, workdir, data_dir))
  assert code == 0, err[-3000:]
  warnings = [l for l in err.splitlines() if "lease" in l]
  assert warnings == [f"warning: taking over the lease on --workdir={workdir} from growjax "
                      f"train (pid {dead['pid']} on host {HOST}): its process is gone"], err
  _, losses, params = lone
  assert logged_losses(workdir) == losses
  got = _params(workdir)
  assert all(np.array_equal(got[k], params[k]) for k in params)
  assert not os.path.exists(_lease_path(workdir))


def test_stale_heartbeat_is_taken_over_and_a_fresh_one_refused(tmp_path, capsys, monkeypatch):
  d = str(tmp_path / "out")
  # A live pid on another host: only its heartbeat tells; 3 s old is alive.
  _write_lease(d, host="other-host", pid=os.getpid(), heartbeat=time.time() - 3)
  with pytest.raises(ValueError) as refused:
    with lease.hold(d, command="train"):
      pass
  assert str(refused.value).startswith(
      f"--workdir={d} is in use by growjax train (pid {os.getpid()} on host other-host, "
      f"started "), refused.value
  assert "heartbeat 3 s ago" in str(refused.value)
  assert json.load(open(_lease_path(d)))["token"] == "someone-else"   # left as it was
  # The same lease, its heartbeat 10 intervals old: stale.
  _write_lease(d, host="other-host", pid=os.getpid(), heartbeat=time.time() - 301)
  with lease.hold(d, command="train"):
    mine = json.load(open(_lease_path(d)))
    assert mine["pid"] == os.getpid() and mine["host"] == HOST
  assert capsys.readouterr().err.splitlines() == [
      f"warning: taking over the lease on --workdir={d} from growjax train (pid "
      f"{os.getpid()} on host other-host): its heartbeat is 301 s old (stale after 300 s)"]
  assert not os.path.exists(_lease_path(d))
  # The heartbeat thread refreshes it; a lease taken over meanwhile is left to its taker.
  monkeypatch.setenv(lease.HEARTBEAT_ENV, "0.05")
  with lease.hold(d, command="train"):
    first = json.load(open(_lease_path(d)))["heartbeat"]
    time.sleep(0.3)
    assert json.load(open(_lease_path(d)))["heartbeat"] > first
    taker = _write_lease(d, host="other-host")
    time.sleep(0.3)
  assert json.load(open(_lease_path(d))) == taker   # not removed, not overwritten
  assert "was taken over or removed while this command ran, now held by growjax train" in capsys.readouterr().err


RACER = """
import sys, time
from growjax import lease
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
try:
  with lease.hold(sys.argv[1], command="race"):
    print("won", flush=True)
    time.sleep(2.0)
except ValueError as e:
  print("refused", e, flush=True)
"""


@pytest.mark.parametrize("leftover", [False, True])
def test_of_racers_exactly_one_wins(tmp_path, leftover):
  d = str(tmp_path / "out")
  if leftover:    # a dead holder's lease: the racers all try to take it over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout
    _write_lease(d, pid=int(dead))
  start = str(time.time() + 3.0)
  racers = [subprocess.Popen([sys.executable, "-c", RACER, d, start], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
  results = [r.communicate(timeout=60) for r in racers]
  outs = [out.strip() for out, _ in results]
  assert sorted(o.split()[0] for o in outs) == ["refused"] * 3 + ["won"], results
  assert all("is in use by growjax race" in o for o in outs if o.startswith("refused"))
  warnings = [l for _, err in results for l in err.splitlines() if "taking over" in l]
  assert len(warnings) == (1 if leftover else 0), results
  assert not os.path.exists(_lease_path(d))


def _one_line(capsys, *argv):
  code = cli.main(["growjax", *argv])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  return err[0]


def test_grow_import_hf_and_prepare_data_refused_while_held(lone, tmp_path, capsys,
                                                             live_holder):
  workdir, _, _ = lone
  grown_config = tmp_path / "grown.py"
  grown_config.write_text(GROWN_CONFIG)
  for cmd, flag, extra in (
      ("grow", "--to", ["--from", str(workdir), "--config", str(grown_config)]),
      ("import-hf", "--to", ["--from", str(tmp_path)]),
      ("prepare-data", "--out", ["--config", os.path.join(ROOT, "configs", "tiny.py")])):
    out = str(tmp_path / cmd)
    _write_lease(out, pid=live_holder.pid, command="sweep")
    line = _one_line(capsys, cmd, *extra, flag, out)
    assert line.startswith(f"growjax {cmd}: {flag}={out} is in use by growjax sweep (pid "
                           f"{live_holder.pid} on host {HOST}, started "), line
    assert os.listdir(out) == [lease.LEASE_NAME]   # nothing written
  # Once the holder is gone the same grow runs, and its rerun is still a no-op.
  out = str(tmp_path / "grow")
  live_holder.kill()
  live_holder.wait()
  argv = ["grow", "--from", str(workdir), "--config", str(grown_config), "--to", out]
  assert cli.main(["growjax", *argv]) == 0
  captured = capsys.readouterr()
  assert "its process is gone" in captured.err
  assert cli.main(["growjax", *argv]) == 0
  assert "already grown, nothing to do" in capsys.readouterr().out
  assert lease.LEASE_NAME not in os.listdir(out)


def test_import_hf_publishes_under_its_lease(tmp_path):
  """import-hf writes a staging dir and renames it onto --to: the lease on --to moves with
  it and is released from the published directory."""
  import hf_dirs
  src, out = str(tmp_path / "hf"), str(tmp_path / "imported")
  hf_dirs.write(src, tokenizer_vocab=64)
  with lease.hold(out, command="import-hf", flag="--to"):
    hf.import_hf(src, out, log=lambda _: None)
    assert lease.LEASE_NAME in os.listdir(out)
    assert json.load(open(_lease_path(out)))["pid"] == os.getpid()
  assert lease.LEASE_NAME not in os.listdir(out) and "0" in os.listdir(out)


@pytest.fixture
def gcs_preconditions(gcs, monkeypatch):
  """The emulator (tests/test_gcs.py) with GCS's ifGenerationMatch on uploads and deletes,
  which it does not check itself: 412 unless the object's generation is the one given
  (0: the object must not exist)."""
  from http import HTTPStatus
  from gcp_storage_emulator import server as emulator_server
  from gcp_storage_emulator.handlers import objects as emulator_objects

  def checked(handler):
    def wrapped(request, response, storage, *args, **kwargs):
      want = request.query.get("ifGenerationMatch")
      if want:
        name = (request.query.get("name") or [None])[0] or request.params.get("object_id")
        if name is None and isinstance(request.data, dict):
          name = request.data.get("meta", {}).get("name")
        try:
          have = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
        except Exception:  # noqa: BLE001 - the emulator's NotFound
          have = "0"
        if str(have) != want[0]:
          response.status = HTTPStatus.PRECONDITION_FAILED
          response.json({"error": {"code": 412, "message": "conditionNotMet"}})
          return
      handler(request, response, storage, *args, **kwargs)
    return wrapped

  for name in ("insert", "delete"):
    original = getattr(emulator_objects, name)
    for _, handlers in emulator_server.HANDLERS:
      for method, fn in list(handlers.items()):
        if fn is original:
          monkeypatch.setitem(handlers, method, checked(original))
  return gcs


def test_gs_lease_by_generation_preconditions(gcs_preconditions, monkeypatch):
  d = f"gs://{BUCKET}/lease/run"
  monkeypatch.setenv(lease.HEARTBEAT_ENV, "0.2")
  with lease.hold(d, command="train"):
    store = lease._Gcs(d)
    raw, generation = store.read()
    assert json.loads(raw)["pid"] == os.getpid()
    assert store.create(b"{}") is None   # exists: the create precondition fails
    time.sleep(0.6)
    raw2, generation2 = store.read()     # the heartbeat replaced it, generation matched
    assert generation2 != generation and json.loads(raw2)["heartbeat"] > json.loads(raw)[
        "heartbeat"]
    assert store.take_over(b"{}", generation) is None   # an old generation loses
  assert store.read() is None   # released
  now = time.time()
  other = {"command": "train", "host": "other-host", "pid": 7, "started": now,
           "heartbeat": now, "heartbeat_s": 30.0, "token": "someone-else"}
  generation = store.create(json.dumps(other).encode())
  with pytest.raises(ValueError, match=r"is in use by growjax train \(pid 7 on host other-"):
    with lease.hold(d, command="train"):
      pass
  store.refresh(json.dumps(dict(other, heartbeat=now - 1000)).encode(), generation)
  with lease.hold(d, command="train"):
    assert json.loads(store.read()[0])["pid"] == os.getpid()
  assert store.read() is None


MULTI = """
import json, os, re, sys
address, pid, held, free = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\\\\d+", "",
                                 os.environ.get("XLA_FLAGS", ""))
os.environ["JAX_PLATFORMS"] = "cpu"
from growjax import distributed, lease
distributed.maybe_initialize(address, 2, pid)
out = {}
try:
  with lease.hold(held, command="train"):
    out["held"] = "taken"
except ValueError as e:
  out["held"] = str(e)
with lease.hold(free, command="train"):
  with open(os.path.join(free, lease.LEASE_NAME)) as f:
    out["holder"] = json.load(f)["pid"]
  distributed.agreed([0])   # both looked before process 0 releases it
print(json.dumps(out), flush=True)
"""


def test_two_processes_agree_process_0_holds(tmp_path, live_holder):
  """jax.distributed over 2 processes: process 0 alone takes the lease; a refusal is the
  same one line on both."""
  held, free = str(tmp_path / "held"), str(tmp_path / "free")
  _write_lease(held, pid=live_holder.pid)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = [subprocess.Popen([sys.executable, "-c", MULTI, address, str(i), held, free],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  results = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
  outs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
  assert outs[0]["held"] == outs[1]["held"]
  assert outs[0]["held"].startswith(f"--workdir={held} is in use by growjax train (pid "
                                    f"{live_holder.pid} on host {HOST}")
  assert outs[0]["holder"] == outs[1]["holder"] == procs[0].pid
  assert not os.path.exists(free)   # released, and the directory made for it removed
