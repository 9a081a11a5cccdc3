"""Growth on a mesh: per-device memory falls with the device count, outputs land in the
large model's sharding, and results equal growth without a mesh.

Memory is read from `compiled.memory_analysis()` of the function `growjax grow`
runs (`offline.grow_state(lower=True)`), compiled for the first 2 and
for all 8 fake CPU devices (tests/conftest.py)."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from growjax import config as config_lib
from growjax.growth import offline
from growjax import sharding
from growjax.growth import stages
from growjax.train import state as state_lib
from growjax.growth import grow, placement, width
from growjax.model import ModelConfig, init_params
from tiny import tiny_base

SMALL = dict(vocab_size=512, num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=2,
             head_dim=32, mlp_dim=384, dtype="float32")
WIDE = dict(SMALL, embed_dim=256, num_heads=8, num_kv_heads=4, mlp_dim=768)   # width x2
DEEP = dict(SMALL, num_layers=8)                                               # depth x4


def _config(small: dict, large: dict, method: str, width_method: str = ""):
  c = tiny_base()
  c.model = config_lib.model_config("tiny", **large)
  c.growth.enabled = True
  c.growth.small_model = config_lib.model_config("tiny", **small)
  c.growth.small_steps = 1
  c.growth.method = method
  c.growth.width_method = width_method
  return c


def _grow_memory(cfg, devices: int) -> tuple[dict, object, state_lib.Setup]:
  """Per-device bytes of the compiled growth (`grow_state`'s jitted function)."""
  devs = jax.devices()[:devices]
  large = state_lib.build(stages.large_stage_config(cfg, ""), devs)
  small = stages.small_stage_config(cfg)
  src_model, src_tx, src_abstract = offline.source_setup(
      {"model": small.model.to_dict(), "config": small.to_dict()}, large)
  g = cfg.growth
  compiled = offline.grow_state(
      src_abstract, src_model, src_tx, large, method=g.method,
      width_method=g.width_method or None, layer_map=None, opt_state="reset",
      schedule="continue", rng=jax.random.key(0), lower=True).compile()
  m = compiled.memory_analysis()
  mem = dict(arg=m.argument_size_in_bytes, out=m.output_size_in_bytes,
             temp=m.temp_size_in_bytes)
  mem["total"] = mem["arg"] + mem["out"] + mem["temp"]
  return mem, compiled, large


@pytest.mark.parametrize("large,method,width_method", [
    (WIDE, "stack", "direct"),   # width x2, function preserving
    (WIDE, "zero", "zero"),      # width x2, new units from the (sharded) initialiser
    (DEEP, "stack", ""),         # depth x4, G_stack
    (DEEP, "zero", ""),          # depth x4, new layers from the initialiser
], ids=["width_direct", "width_zero", "depth_stack", "depth_zero"])
def test_growth_memory_per_device_falls_with_devices(large, method, width_method):
  cfg = _config(SMALL, large, method, width_method)
  two, _, _ = _grow_memory(cfg, 2)
  eight, compiled, setup = _grow_memory(cfg, 8)
  # The large state (params + AdamW moments) is split over 4x the devices...
  assert eight["out"] <= two["out"] / 3.5, (two, eight)
  # ...and so are the growth's temporaries (gathers, the fresh initialiser output):
  # before, a width gather along the fsdp-split `embed` axis made every device
  # hold whole leaves, and the unconstrained init a whole large model.
  assert eight["temp"] <= two["temp"] / 2 + 2 ** 16, (two, eight)
  assert eight["total"] <= two["total"] / 3, (two, eight)
  # Outputs land in the large state's shardings.
  want = jax.tree.leaves(setup.state_shardings)
  got = jax.tree.leaves(compiled.output_shardings)
  shapes = jax.tree.leaves(setup.abstract_state)
  assert len(got) == len(want) == len(shapes)
  for g, w, s in zip(got, want, shapes):
    assert g.is_equivalent_to(w, len(s.shape)), (g, w)


# ------------------------------------------------------------------ same results on a mesh

S = ModelConfig(**SMALL)
MESH_KW = dict(data=1, fsdp=4, tensor=2)


@functools.lru_cache(maxsize=None)
def _small_params():
  return jax.jit(lambda k: init_params(S, k))(jax.random.key(0))


def _param_shardings(cfg: ModelConfig, mesh) -> dict:
  return placement.Placement(mesh, sharding.DEFAULT_RULES).shardings(cfg)


def _assert_placed(tree, cfg, mesh):
  for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(_param_shardings(cfg, mesh))):
    assert x.sharding.is_equivalent_to(sh, x.ndim), (x.sharding, sh)


@pytest.mark.parametrize("dst,method,kw", [
    (ModelConfig(**WIDE), "stack", {}),
    (ModelConfig(**WIDE), "zero", {"rng": jax.random.key(3)}),
    (ModelConfig(**dict(WIDE, num_layers=4)), "random", {"rng": jax.random.key(4)}),
    (ModelConfig(**DEEP), "zero", {"rng": jax.random.key(5)}),
], ids=["width_direct", "width_zero", "width_depth_random", "depth_zero"])
def test_growth_on_a_mesh_equals_growth_without_one(dst, method, kw):
  small = _small_params()
  plain = grow(small, S, dst, method, **kw)
  mesh = sharding.make_mesh(MESH_KW)
  placed_small = jax.device_put(small, _param_shardings(S, mesh))
  # The mesh and rules from the context, as `growjax grow` sets them; no out_shardings:
  # the growth's own constraints place the result.
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    placed = grow(placed_small, S, dst, method, **kw)
  _assert_placed(placed, dst, mesh)
  assert jax.tree.all(jax.tree.map(np.array_equal, placed, plain))


def test_take_units_is_take():
  for src_cfg, dst_cfg in [(S, ModelConfig(**WIDE)),
                           (S, ModelConfig(**dict(WIDE, num_kv_heads=2))),  # 4 heads per kv
                           (S, ModelConfig(**dict(WIDE, embed_dim=192)))]:  # x1.5: no tiling
    for name, m in width.plan(src_cfg, dst_cfg).items():
      x = np.random.default_rng(0).normal(size=(3, m.size, 5)).astype(np.float32)
      np.testing.assert_array_equal(width.take_units(x, 1, m), np.take(x, m.src, axis=1))
      assert (m.tiling is None) == (name == "embed" and dst_cfg.embed_dim == 192)


def test_learn_runs_sharded_on_the_mesh():
  dst = ModelConfig(**WIDE)  # width learn: the dense maps; depth learn shares `_fit`
  small = _small_params()
  batches = [np.asarray(jax.random.randint(jax.random.key(i), (8, 17), 0, 512))
             for i in range(2)]
  plain = grow(small, S, dst, "learn", learn_batches=batches, learn_steps=2)
  mesh = sharding.make_mesh(MESH_KW)
  placed = grow(small, S, dst, "learn", learn_batches=batches, learn_steps=2, mesh=mesh,
                rules=sharding.DEFAULT_RULES)
  _assert_placed(placed, dst, mesh)
  for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
