"""Test-wide setup: 8 fake CPU devices so sharding is tested without accelerators."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data dir for the whole session, so the embedded corpus is built once."""
  d = tmp_path_factory.mktemp("tfds")
  os.environ["GROWJAX_DATA_DIR"] = str(d)
  return str(d)
