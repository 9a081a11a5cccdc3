"""Test-wide setup: 8 fake CPU devices so sharding is tested without accelerators, XLA's
CPU backend at LLVM optimisation level 0, and one persistent compilation cache for the
session (tests and the worker processes they start compile the same small steps many
times; the cache is removed at exit).

Compiling dominates the suite's time and the tiny models' steps run in milliseconds:
level 0 halves LLVM's share of each compile (a tiny train step on 8 devices: 4.1 s ->
2.2 s of CPU) and leaves the HLO passes, SPMD partitioning and buffer assignment (what
the memory and HLO tests read) as they are. Subprocesses inherit XLA_FLAGS; those that
set their own device count replace only that flag."""

import atexit
import os
import shutil
import tempfile

XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {XLA_TEST_FLAGS}"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="growjax-test-jit-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data dir for the whole session, so the embedded corpus is built once."""
  d = tmp_path_factory.mktemp("tfds")
  os.environ["GROWJAX_DATA_DIR"] = str(d)
  return str(d)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: multi-process and other long tests (`pytest -m 'not slow'` skips "
      "them for a fast inner loop; CI runs everything)")
