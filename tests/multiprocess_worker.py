"""One process of the multi-process CPU runs in test_multiprocess.py (not a test itself).

argv: coordinator_address process_id num_processes spec_json
spec: {"devices": fake CPU devices per process,
       "out": a JSON file this process writes (suffixed .<pid>),
       "scenarios": {name: args, ...}}: run in the order given, each with its own
       "workdir" in args; one launch runs several scenarios because starting two
       processes (interpreter, imports, jax.distributed) costs more than most scenarios.
names: "grow", "mesh" ({"meshes": [...], "steps": N, "decay_steps": N}), "unshared",
       "train" ({"mesh": {...}, "steps": N, "checkpoint_every": N}), "fp8_delayed"
       ({"mesh": {...}, "steps": N, "checkpoint_every": N}).
The file holds {name: that scenario's result}.
"""

import json
import os
import re
import sys

address, pid, nproc, spec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(
    sys.argv[4])
# The test session's XLA flags (tests/conftest.py), with this process's device count.
os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                 os.environ.get("XLA_FLAGS", "")) + (
    f" --xla_force_host_platform_device_count={spec['devices']}")
os.environ["JAX_PLATFORMS"] = "cpu"

from growjax import distributed  # noqa: E402

distributed.maybe_initialize(address, nproc, pid)

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
sys.path.insert(0, os.path.dirname(__file__))
from tiny import grow_config, tiny_config  # noqa: E402

from growjax import data, train  # noqa: E402
from growjax.growth import stages  # noqa: E402
from growjax.train import state as state_lib  # noqa: E402

assert jax.process_count() == nproc and jax.device_count() == spec["devices"] * nproc


def plain_config(mesh, args):
  cfg = tiny_config(**mesh)
  cfg.train.steps = args.get("steps", 6)
  cfg.train.checkpoint_every = args.get("checkpoint_every", 4)
  cfg.train.eval_every = 0
  cfg.optimizer.decay_steps = args.get("decay_steps", 0)
  return cfg


def grow(args):
  # A whole grow run, stopped inside the small stage and resumed. On resume, process 1
  # is shown a filesystem where every stage looks finished: the stage decision must be
  # process 0's, agreed by all, or the processes would run different stages and hang.
  cfg = grow_config()
  cfg.mesh.fsdp = -1
  cfg.growth.small_mesh.data = 1
  cfg.growth.small_mesh.fsdp = -1
  first = stages.run(cfg, args["workdir"], stop_after_steps=3)
  view = stages.stage_view
  if pid == 1:
    stages.stage_view = lambda *dirs: (cfg.growth.small_steps, 0, cfg.train.steps)
  try:
    rest = stages.run(cfg, args["workdir"])
  finally:
    stages.stage_view = view
  return {"small": {**first["small"]["loss"], **rest["small"]["loss"]},
          "large": rest["large"]["loss"]}


def mesh(args):
  # For each mesh: which rows this process holds of the first global batch, and a short
  # run's losses.
  out = {}
  for i, m in enumerate(args["meshes"]):
    cfg = plain_config(m, args)
    setup = state_lib.build(cfg)
    host = train.HostBatches.of(setup.batch_sharding, cfg.train.global_batch_size)
    local = next(data.train_iterator(cfg.data, global_batch_size=cfg.train.global_batch_size,
                                     seed=cfg.seed, rows=host.rows))
    batch = host.to_global(local)
    out[str(i)] = {
        "rows": host.rows.tolist(), "global_shape": list(batch["inputs"].shape),
        "shards": [{"rows": list(range(*s.index[0].indices(cfg.train.global_batch_size))),
                    "inputs": np.asarray(s.data).tolist()}
                   for s in batch["inputs"].addressable_shards],
        "loss": train.train(cfg, f"{args['workdir']}/{i}")["loss"]}
  return out


def unshared(args):
  # Each process is given its own directory, as on hosts with local disks.
  try:
    distributed.check_shared_workdir(f"{args['workdir']}/p{pid}")
    return {"error": None}
  except ValueError as e:
    return {"error": str(e)}


def plain_train(args):
  # A plain run; the test may SIGTERM one process while it runs.
  history = train.train(plain_config(args["mesh"], args), args["workdir"])
  return {"loss": history["loss"], "stopped_at": history["stopped_at"]}


def fp8_delayed(args):
  # Delayed FP8 scaling across processes: each process's own copy of the replicated amax
  # histories, as checkpointed at the last step (every process reads them back).
  from growjax import checkpoint as ckpt_lib
  cfg = plain_config(args["mesh"], args)
  cfg.model.matmul_precision, cfg.model.fp8_scaling = "fp8", "delayed"
  history = train.train(cfg, args["workdir"])
  setup = state_lib.build(cfg)
  ck = ckpt_lib.Checkpoints(f"{args['workdir']}/checkpoints", use_async=False)
  step = ck.latest_step()
  state, _, _ = ck.restore(step, setup.abstract_state, keep_fp8_history=True)
  ck.close()
  flat = jax.tree_util.tree_flatten_with_path(state_lib.to_host(state.fp8_history))[0]
  return {"loss": history["loss"],
          "history": {jax.tree_util.keystr(k): np.asarray(v).tolist() for k, v in flat}}


SCENARIOS = {"grow": grow, "mesh": mesh, "unshared": unshared, "train": plain_train,
             "fp8_delayed": fp8_delayed}
out = {name: SCENARIOS[name](args) for name, args in spec["scenarios"].items()}
with open(f"{spec['out']}.{pid}", "w") as f:
  json.dump(out, f)
print(f"worker {pid} done", flush=True)
