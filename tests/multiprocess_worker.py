"""One process of the 2-process CPU run in test_multiprocess.py (not a test itself).

argv: coordinator_address process_id num_processes workdir out_json
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

from growjax import distributed  # noqa: E402

address, pid, nproc, workdir, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
distributed.maybe_initialize(address, nproc, pid)

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_stages import grow_config  # noqa: E402

from growjax import stages  # noqa: E402

assert jax.process_count() == nproc and jax.device_count() == 4 * nproc
cfg = grow_config()
cfg.mesh.fsdp = -1
cfg.growth.small_mesh.data = 1
cfg.growth.small_mesh.fsdp = -1
first = stages.run(cfg, workdir, stop_after_steps=3)        # stop inside the small stage
rest = stages.run(cfg, workdir)                              # resume, grow, large stage
if pid == 0:
  with open(out, "w") as f:
    json.dump({"small": {**first["small"]["loss"], **rest["small"]["loss"]},
               "large": rest["large"]["loss"]}, f)
