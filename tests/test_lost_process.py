"""A lost process (issue 26): two `python -m growjax train` processes on localhost (CPU,
jax.distributed, 2 fake devices each); process 1 is SIGKILLed mid-run, and process 0
ends within --heartbeat_timeout with one line naming it, exit 1, instead of JAX's C++
abort (a stack dump, SIGABRT) after its own 100 s."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from growjax import data
from tiny import (ROOT, console_config, free_port, logged_losses, subprocess_env,
                  write_console_config)

TIMEOUT = 8


@pytest.mark.slow
def test_a_killed_process_ends_the_other_with_one_line(tmp_path, data_dir):
  data.prepare_inline(console_config().data)   # once, here, not raced by the two processes
  config = write_console_config(tmp_path, "long", steps=100000, checkpoint_every=100000,
                                eval_every=0)
  workdir = tmp_path / "run"
  env = subprocess_env(data_dir)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")) + " --xla_force_host_platform_device_count=2"
  address = f"127.0.0.1:{free_port()}"
  outs = [open(tmp_path / f"out.{i}", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "growjax", "train", f"--config={config}", f"--workdir={workdir}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
       f"--heartbeat_timeout={TIMEOUT}"], cwd=ROOT, env=env, stdout=outs[i],
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    deadline = time.time() + 150
    while time.time() < deadline:
      assert all(p.poll() is None for p in procs), "a process ended before the kill"
      try:
        if max(logged_losses(workdir), default=0) >= 2:
          break
      except (OSError, ValueError):
        pass
      time.sleep(0.2)
    else:
      pytest.fail("no step logged")
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    assert procs[0].wait(timeout=TIMEOUT + 30) == 1
    took = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outs[0].seek(0)
  console = outs[0].read()
  assert took < TIMEOUT + 30
  lines = [x for x in console.splitlines() if x.startswith("growjax train:")]
  assert lines == [f"growjax train: lost process 1: no heartbeat for {TIMEOUT} s "
                   f"(--heartbeat_timeout) — check that host, then rerun the same command "
                   f"on every host to resume from the last checkpoint"], console[-3000:]
  assert console.rstrip().endswith(lines[0])
  for dump in ("Check failure", "    @ ", "Traceback", "Terminating process"):
    assert dump not in console, console[-3000:]
