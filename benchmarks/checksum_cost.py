"""What checkpoint checksums cost: one save of a whole train state (params and Adam's
two moments, float32) with and without the xxh3 manifest, and the verification a resume
runs (issue 26: at most 5% of the save time at 1.1B).

  python benchmarks/checksum_cost.py --config configs/llama.py:size=1b --dir /tmp/ckbench

CPU only, one device: the arrays are random numpy values placed on the host (no model
init), written with `growjax.checkpoint.Checkpoints` (synchronous save, as the timing
needs), then `write_manifest` timed alone on the finished step (the page cache warm, as
right after a save) and `verify_step` with and without checksums. Needs about 2.2x the
state in memory (the arrays and orbax's write buffers) and 1x on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from growjax import checkpoint as ckpt_lib  # noqa: E402
from growjax.train import state as state_lib  # noqa: E402


def load_config(spec: str):
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def random_state(cfg):
  """The train state's structure (params, optimizer state, step) with random float32
  values, one device: what a 1.1B checkpoint holds, without initialising the model."""
  setup = state_lib.build(cfg, jax.devices()[:1])
  rng = np.random.default_rng(0)

  def fill(leaf):
    if not hasattr(leaf, "shape"):
      return leaf
    if not np.issubdtype(leaf.dtype, np.floating):
      return jax.numpy.zeros(leaf.shape, leaf.dtype)
    return jax.device_put(rng.standard_normal(leaf.shape, dtype=np.float32).astype(leaf.dtype))

  return jax.tree.map(fill, setup.abstract_state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/llama.py:size=1b")
  parser.add_argument("--dir", default="/tmp/growjax_checksum_cost")
  parser.add_argument("--out", default="", help="also write the figures as JSON here")
  args = parser.parse_args()
  cfg = load_config(args.config)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
  t0 = time.perf_counter()
  state = random_state(cfg)
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
  print(f"state: {n_bytes / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")
  shutil.rmtree(args.dir, ignore_errors=True)
  checkpoints = ckpt_lib.Checkpoints(args.dir, use_async=False, keep=None)
  t0 = time.perf_counter()
  checkpoints.save(1, state, {}, {}, force=True)       # the save, then its manifest
  save_and_manifest_s = time.perf_counter() - t0
  step_dir = os.path.join(checkpoints.directory, "1")
  os.remove(os.path.join(step_dir, ckpt_lib.FILES))
  t0 = time.perf_counter()
  ckpt_lib.write_manifest(step_dir)
  manifest_s = time.perf_counter() - t0
  save_s = save_and_manifest_s - manifest_s
  t0 = time.perf_counter()
  assert ckpt_lib.verify_step(step_dir, checksums=False) is None
  verify_sizes_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  assert ckpt_lib.verify_step(step_dir) is None
  verify_s = time.perf_counter() - t0
  on_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(step_dir)
                for f in fs)
  figures = dict(config=args.config, state_gib=n_bytes / 2**30, on_disk_gib=on_disk / 2**30,
                 save_s=save_s, checksum_s=manifest_s, checksum_share_of_save=manifest_s / save_s,
                 checksum_gib_per_s=on_disk / 2**30 / manifest_s,
                 verify_sizes_s=verify_sizes_s, verify_checksums_s=verify_s,
                 cpus=os.cpu_count(), device=str(jax.devices()[0]))
  print(json.dumps(figures, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(figures, f, indent=1)
  checkpoints.close()
  shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
  main()
