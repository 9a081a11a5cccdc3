"""Per-device memory of the train step and of growth, compiled for N devices without any.

  python benchmarks/memory_plan.py                          # default cases, 8/64/256 devices
  python benchmarks/memory_plan.py --devices 8,32 --case 7b_width_grow
  python benchmarks/memory_plan.py --devices 128 --case 7b_train --remat dots --per_device 2

Each device count runs in its own process on the CPU with that many fake devices
(`--xla_force_host_platform_device_count`, set before jax is imported). There
the real config is built (`growjax.train.state.build`) on an fsdp mesh of all devices,
and the functions growjax runs are compiled ahead of time on abstract, sharded
inputs (nothing is allocated): the train step (`train.make_train_step`, lowered on
`setup.abstract_state` and a batch in `setup.batch_sharding`), and growth (the
one jitted function `offline.grow_state` runs, via its `lower=True`,
lowered on the small state placed on the large mesh). Reported per device:
params and optimizer state from the shardings' per-device shapes, and from
`compiled.memory_analysis()` the arguments, outputs, temporaries and their
total (arguments + outputs - donated aliases + temporaries: what the step
holds at its peak, generated code aside). For growth the arguments are the
whole small state (params and moments) on the large mesh, which `growjax grow`
holds while it grows, though the function reads only what it grows. XLA:CPU
schedules and fuses unlike XLA:GPU/TPU, so temporaries are indicative; the
sharded sizes are exact.

Cases (name: what, config):
  1b_train        train step, configs/llama.py:size=1b, 2 sequences x 2048 per device
  7b_train        train step, configs/llama.py:size=7b, 1 x 2048 per device
  7b_stack_grow   8L x 4096 (1.9B) -> 7B by G_stack x4 (configs/grow.py:recipe=7b)
  7b_width_grow   7B at half width (embed 2048, 16 heads, mlp 5504; 1.7B) -> 7B by
                  width x2 `direct` (configs/llama.py:size=7b)
  28b_stack_grow  7B -> 128L x 4096 (26.2B) by G_stack x4 (configs/grow.py:recipe=28b)
  28b_train       train step of that 26.2B model, 1 x 2048 per device
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

# name: (kind, config file[:args], sequences per device for train cases)
CASES = {
    "1b_train": ("train", "configs/llama.py:size=1b", 2),
    "7b_train": ("train", "configs/llama.py:size=7b", 1),
    "7b_stack_grow": ("grow", "configs/grow.py:recipe=7b", 0),
    "7b_width_grow": ("grow", "configs/llama.py:size=7b", 0),
    "28b_stack_grow": ("grow", "configs/grow.py:recipe=28b", 0),
    "28b_train": ("train", "configs/grow.py:recipe=28b", 1),
}
DEFAULT_CASES = tuple(CASES)


def load_config(path: str):
  """`configs/x.py[:args]` -> its ConfigDict, as `--config` loads it."""
  import importlib.util
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("memory_plan_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  import jax
  import numpy as np
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def memory_row(compiled, state) -> dict:
  m = compiled.memory_analysis()
  return {"params_gib": per_device_bytes(state.params) / GIB,
          "opt_gib": per_device_bytes(state.opt_state) / GIB,
          "arg_gib": m.argument_size_in_bytes / GIB, "out_gib": m.output_size_in_bytes / GIB,
          "alias_gib": m.alias_size_in_bytes / GIB, "temp_gib": m.temp_size_in_bytes / GIB,
          "total_gib": (m.argument_size_in_bytes + m.output_size_in_bytes
                        - m.alias_size_in_bytes + m.temp_size_in_bytes) / GIB}


def train_case(cfg, per_device: int, remat: str = "") -> dict:
  import jax
  import jax.numpy as jnp

  from growjax.train import state as state_lib
  from growjax import train
  n = jax.device_count()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
  cfg.train.global_batch_size = per_device * n
  if remat:
    cfg.model.remat_policy = remat
  setup = state_lib.build(cfg)
  batch = {k: jax.ShapeDtypeStruct((cfg.train.global_batch_size, cfg.data.seq_len), jnp.int32,
                                   sharding=setup.batch_sharding)
           for k in ("inputs", "targets")}
  with jax.set_mesh(setup.mesh):
    t0 = time.perf_counter()
    compiled = train.make_train_step(setup).lower(train.step_abstract_state(setup),
                                                  batch).compile()
  row = memory_row(compiled, setup.abstract_state)
  row.update(compile_s=time.perf_counter() - t0, params=setup.model_cfg.num_params(),
             what=f"train step, batch {cfg.train.global_batch_size}x{cfg.data.seq_len}, "
                  f"remat {cfg.model.remat_policy}")
  return row


def grow_case(cfg, name: str) -> dict:
  import flax.linen as nn
  import jax
  from growjax import config as config_lib
  from growjax.growth import offline
  from growjax import growth
  from growjax.growth import stages
  from growjax.train import state as state_lib
  from growjax.model import ModelConfig

  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
  cfg.train.global_batch_size = jax.device_count()
  if name == "7b_width_grow":
    cfg.growth.small_model = config_lib.model_config(
        "7b", embed_dim=2048, num_heads=16, num_kv_heads=16, mlp_dim=5504,
        remat_policy=cfg.model.remat_policy)
    cfg.growth.method = "stack"  # same depth: the width operator only (direct)
  g = cfg.growth
  large = state_lib.build(stages.large_stage_config(cfg, ""))
  small = stages.small_stage_config(cfg)
  meta = {"model": small.model.to_dict(), "config": small.to_dict()}
  src_model, src_tx, src_abstract = offline.source_setup(meta, large)
  with jax.set_mesh(large.mesh), nn.logical_axis_rules(large.rules):
    t0 = time.perf_counter()
    lowered = offline.grow_state(
        src_abstract, src_model, src_tx, large, method=g.method,
        width_method=g.width_method or None, layer_map=None, opt_state=g.opt_state,
        schedule=g.schedule, rng=jax.random.key(0), lower=True)
    compiled = lowered.compile()
  row = memory_row(compiled, large.abstract_state)
  # jit drops arguments it does not read (the small moments, under opt_state
  # reset), but `growjax grow` holds the whole restored small state meanwhile.
  held = per_device_bytes(src_abstract) / GIB
  row["total_gib"] += max(0.0, held - row["arg_gib"])
  row["arg_gib"] = max(held, row["arg_gib"])
  src, dst = ModelConfig.from_config(small.model), large.model_cfg
  spec = growth.resolve(src, dst, g.method, g.width_method or None)
  ops = ([f"depth {spec.method}"] if spec.layer_map else []) + \
      ([f"width {spec.width_method}"] if spec.width_method else [])
  row.update(compile_s=time.perf_counter() - t0, params=dst.num_params(),
             src_params=src.num_params(),
             what=f"grow {src.num_layers}Lx{src.embed_dim} ({src.num_params() / 1e9:.2f}B) -> "
                  f"{dst.num_layers}Lx{dst.embed_dim} ({dst.num_params() / 1e9:.2f}B) by "
                  f"{' + '.join(ops)}, opt_state {g.opt_state}")
  return row


def run_cases(cases: list[str], per_device: int = 0, remat: str = "") -> None:
  import jax
  for name in cases:
    kind, path, default_per_device = CASES[name]
    cfg = load_config(path)
    try:
      if kind == "train":
        row = train_case(cfg, per_device or default_per_device, remat)
      else:
        row = grow_case(cfg, name)
    except Exception as e:  # noqa: BLE001  (a case that does not compile is a result too)
      row = {"error": f"{type(e).__name__}: {e}"[-2000:]}
    row.update(case=name, devices=jax.device_count())
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", default="8,64,256", help="comma-separated fake device counts")
  p.add_argument("--case", action="append", choices=sorted(CASES),
                 help=f"default: all of {', '.join(DEFAULT_CASES)}")
  p.add_argument("--per_device", type=int, default=0,
                 help="train cases: sequences per device (default: the case's)")
  p.add_argument("--remat", default="", help="train cases: remat policy (default: the config's)")
  p.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  cases = a.case or list(DEFAULT_CASES)
  if a._one:
    run_cases(cases, a.per_device, a.remat)
    return
  rows = []
  for n in [int(x) for x in a.devices.split(",")]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={n}").strip())
    cmd = [sys.executable, os.path.abspath(__file__), "--_one",
           f"--per_device={a.per_device}", f"--remat={a.remat}"]
    for c in cases:
      cmd.append(f"--case={c}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    got = [json.loads(l[7:]) for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if len(got) < len(cases):
      got.append({"case": "?", "devices": n, "error": out.stderr[-2000:]})
    for r in got:
      print(json.dumps(r), flush=True)
    rows += got
  order = {c: i for i, c in enumerate(cases)}
  rows.sort(key=lambda r: (order.get(r["case"], 99), r["devices"]))
  print("\n| case | devices | what | params/dev (GiB) | opt state/dev (GiB) | arguments "
        "| outputs | donated | temp | total/dev (GiB) | compile (s) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['case']} | {r['devices']} | FAILED: {r['error'][-300:]} |")
      continue
    print(f"| {r['case']} | {r['devices']} | {r['what']} | {r['params_gib']:.2f} | "
          f"{r['opt_gib']:.2f} | {r['arg_gib']:.2f} | {r['out_gib']:.2f} | "
          f"{r['alias_gib']:.2f} | {r['temp_gib']:.2f} | **{r['total_gib']:.2f}** | "
          f"{r['compile_s']:.0f} |")


if __name__ == "__main__":
  main()
