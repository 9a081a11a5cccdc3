"""The mixture-of-experts block (growjax.model.moe) by what it claims: dropless routing
equals a per-token dense reference, the capacity path drops exactly the rows it counts,
expert parallelism (with fsdp and tensor) equals one device, the expert axis cuts the
memory per device, and active-parameter FLOPs (8 fake CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growjax import config as config_lib
from growjax import sharding
from growjax.model import ModelConfig
from growjax.model import init_params as _init_params
from growjax.model import moe
from growjax.train import state as state_lib
from growjax.train import step as step_lib
from tiny import random_batches, tiny_base


init_params = jax.jit(_init_params, static_argnums=0)

def _cfg(**kw):
  base = dict(vocab_size=64, num_layers=2, embed_dim=16, num_heads=2, num_kv_heads=2,
              head_dim=8, mlp_dim=32, num_experts=4, experts_per_token=2, expert_mlp_dim=8,
              dtype="float32")
  return ModelConfig(**dict(base, **kw))


def _layer0(cfg, seed=0):
  """One MoE block's params: normal(0.3) of the declared shapes."""
  shapes = {"router": (16, 4), "gate": (16, 4, 8), "up": (16, 4, 8), "down": (4, 8, 16)}
  if cfg.shared_mlp_dim:
    shapes.update(shared_gate=(16, 8), shared_up=(16, 8), shared_down=(8, 16))
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(0.3 * rng.standard_normal(v), jnp.float32) for k, v in shapes.items()}


def _reference(cfg, p, x_NxE, cap=0):
  """Per token, in numpy float64: route, then the chosen experts' SwiGLUs weighted; with
  `cap`, an expert's rows past the first `cap` (in token order) are dropped."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x_NxE, np.float64)
  logits = x @ p["router"]
  silu = lambda v: v / (1 + np.exp(-v))   # noqa: E731
  out, taken, dropped = np.zeros_like(x), np.zeros(cfg.num_experts, int), 0
  for i, l in enumerate(logits):
    top = np.argsort(-l, kind="stable")[:cfg.experts_per_token]
    if cfg.moe_router == "topk_softmax":
      w = np.exp(l[top] - l[top].max())
      w /= w.sum()
    else:
      w = (np.exp(l - l.max()) / np.exp(l - l.max()).sum())[top]
    for e, we in zip(top, w):
      taken[e] += 1
      if cap and taken[e] > cap:
        dropped += 1
        continue
      h = silu(x[i] @ p["gate"][:, e]) * (x[i] @ p["up"][:, e])
      out[i] += we * (h @ p["down"][e])
    if cfg.shared_mlp_dim:
      out[i] += (silu(x[i] @ p["shared_gate"]) * (x[i] @ p["shared_up"])) @ p["shared_down"]
  return out, dropped


@pytest.mark.parametrize("router,shared", [("topk_softmax", 0), ("softmax_topk", 8)])
def test_dropless_equals_a_per_token_dense_reference(router, shared):
  cfg = _cfg(moe_router=router, shared_mlp_dim=shared)
  p = _layer0(cfg)
  x = jax.random.normal(jax.random.key(1), (3, 8, 16))
  out, stats = jax.jit(lambda p, x: moe.apply_moe(cfg, p, x))(p, x)
  want, dropped = _reference(cfg, p, x.reshape(24, 16))
  np.testing.assert_allclose(out.reshape(24, 16), want, rtol=1e-5, atol=1e-6)
  assert float(stats["dropped"]) == 0.0 and dropped == 0


def test_capacity_drops_exactly_the_rows_it_reports():
  cfg = _cfg(capacity_factor=0.5)       # 24 tokens x 2 / 4 experts x 0.5: 6 rows each
  assert moe.capacity(cfg, 24) == 6
  p = _layer0(cfg)
  # A router that sends most tokens to experts 0 and 1, so capacity bites.
  p["router"] = p["router"].at[:, :2].add(0.5)
  x = jax.random.normal(jax.random.key(1), (3, 8, 16))
  out, stats = jax.jit(lambda p, x: moe.apply_moe(cfg, p, x))(p, x)
  want, dropped = _reference(cfg, p, x.reshape(24, 16), cap=6)
  assert dropped > 0
  assert float(stats["dropped"]) * 48 == dropped
  np.testing.assert_allclose(out.reshape(24, 16), want, rtol=1e-5, atol=1e-6)


def test_expert_parallel_capacity_equals_each_devices_tokens_alone():
  """With a capacity each device drops among its own tokens: under expert x fsdp x tensor
  the output equals each of the 4 token shards dispatched alone, drops counted over all."""
  import flax.linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as P
  cfg = _cfg(capacity_factor=0.5)
  p = _layer0(cfg)
  p["router"] = p["router"].at[:, :2].add(0.5)
  x = jax.random.normal(jax.random.key(1), (8, 6, 16))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "expert": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  axes = {"router": ("embed", "experts"), "gate": ("embed", "experts", "expert_mlp"),
          "up": ("embed", "experts", "expert_mlp"), "down": ("experts", "expert_mlp", "embed")}
  p_sh = {k: NamedSharding(mesh, nn.logical_to_mesh_axes(v, rules)) for k, v in axes.items()}
  x_sh = NamedSharding(mesh, P(("data", "fsdp", "expert")))

  def ep(p, x):
    with sharding.activation_sharding(mesh, rules):
      return moe.apply_moe(cfg, p, x)

  out, stats = jax.jit(ep, in_shardings=(p_sh, x_sh))(p, x)
  alone = jax.jit(lambda p, x: moe.apply_moe(cfg, p, x))
  parts = [alone(p, x[2 * i:2 * i + 2]) for i in range(4)]
  np.testing.assert_allclose(out, np.concatenate([o for o, _ in parts]), rtol=1e-5, atol=1e-6)
  dropped = sum(float(s["dropped"]) for _, s in parts) / 4
  assert dropped > 0 and float(stats["dropped"]) == pytest.approx(dropped)


def _moe_run_config(**mesh):
  c = tiny_base(num_layers=1)
  c.model.update(num_experts=4, experts_per_token=2, expert_mlp_dim=64, shared_mlp_dim=32)
  c.train.update(global_batch_size=8, steps=4)
  c.optimizer.warmup_steps = 1
  for k, v in dict(dict(data=1, fsdp=1, expert=1, tensor=1), **mesh).items():
    c.mesh[k] = v
  return c


def _loss_and_grads(cfg, devices):
  setup = state_lib.build(cfg, devices)
  params = jax.device_put(init_params(setup.model_cfg, jax.random.key(0)),
                          setup.state_shardings.params)
  batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in random_batches(1)[0].items()}

  def loss(params, batch):
    with sharding.activation_sharding(setup.mesh, setup.rules):
      return step_lib.loss_fn(params, batch, setup.model_cfg, cfg.train, 0.0)

  (_, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch)
  return jax.device_get(grads), jax.device_get(metrics)


def test_expert_parallel_with_fsdp_and_tensor_equals_one_device():
  one_grads, one = _loss_and_grads(_moe_run_config(), jax.devices()[:1])
  ep_grads, ep = _loss_and_grads(_moe_run_config(expert=2, fsdp=2, tensor=2), jax.devices())
  assert ep["loss"] == pytest.approx(one["loss"], rel=1e-6)
  for k in ("moe_balance_loss", "moe_router_z_loss", "moe_z_l0", "moe_dropped"):
    assert ep[k] == pytest.approx(one[k], rel=1e-5, abs=1e-9)
  assert one["moe_dropped"] == 0.0 and one["moe_balance_l0"] >= 1.0 - 1e-6
  # Gradients through both all-to-alls, the gather and the sum.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               ep_grads, one_grads)


def _argument_bytes(cfg):
  """Per-device bytes of the arguments (params, batch) of the compiled loss."""
  setup = state_lib.build(cfg, jax.devices())
  shape = (cfg.train.global_batch_size, cfg.data.seq_len)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=setup.batch_sharding)
           for k in ("inputs", "targets")}

  def loss(params, batch):
    with sharding.activation_sharding(setup.mesh, setup.rules):
      return step_lib.loss_fn(params, batch, setup.model_cfg, cfg.train, 0.0)[0]

  lowered = jax.jit(loss).lower(setup.abstract_state.params, batch)
  return lowered.compile().memory_analysis().argument_size_in_bytes


def test_memory_per_device_falls_with_the_expert_axis():
  c = _moe_run_config()
  c.model.update(num_experts=8, expert_mlp_dim=256, shared_mlp_dim=0)
  data8 = _argument_bytes(_with_mesh(c, data=8))
  expert8 = _argument_bytes(_with_mesh(c, expert=8))
  # The experts (3 matrices of 128 x 8 x 256 float32) dominate and split 8 ways;
  # attention, norms and embeddings stay replicated.
  m = ModelConfig.from_config(c.model)
  expert_bytes = 3 * 128 * 8 * 256 * 4
  assert data8 - expert8 == pytest.approx(expert_bytes * 7 / 8, rel=0.02)
  assert expert8 < data8 / 2
  assert m.num_params() > 3 * m.num_params(active=True) / 2


def _with_mesh(c, **mesh):
  c = c.copy_and_resolve_references()
  for k, v in dict(dict(data=1, fsdp=1, expert=1, tensor=1), **mesh).items():
    c.mesh[k] = v
  return c


def test_active_parameter_flops():
  dense = _cfg(num_experts=0)
  m = _cfg(shared_mlp_dim=8)
  e = 16
  attn = e * 8 * (2 * 2 + 2 * 2)
  per_layer_active = attn + e * 4 + 3 * e * (2 * 8 + 8) + 2 * e
  per_layer_total = attn + e * 4 + 3 * e * (4 * 8 + 8) + 2 * e
  head = 64 * e
  assert m.num_params(include_embedding=False, active=True) == 2 * per_layer_active + e + head
  assert m.num_params() == 2 * per_layer_total + e + 2 * head
  assert m.flops_per_token(32) == 6.0 * (2 * per_layer_active + e + head) + 12 * 2 * 2 * 8 * 32
  assert dense.num_params(active=True) == dense.num_params()


def test_bad_moe_fields_are_refused_before_compute():
  with pytest.raises(ValueError, match="experts_per_token=5 must be in 1..num_experts=4"):
    _cfg(experts_per_token=5).validate()
  with pytest.raises(ValueError, match="expert_mlp_dim must be a positive integer"):
    _cfg(expert_mlp_dim=0).validate()
  with pytest.raises(ValueError, match="moe_router='top1'"):
    _cfg(moe_router="top1").validate()
  c = _moe_run_config(expert=8)
  with pytest.raises(ValueError, match="num_experts=4 does not divide over mesh axes"):
    config_lib.validate(c, 8)


def test_kv_cache_decoding_is_the_models_greedy_continuation_with_moe():
  """Decoding (growjax.model.decode, what `growjax sample` and eval's generation use) takes
  the MoE branch: its greedy tokens are the argmax of the model's own logits."""
  from growjax.model import Transformer, decode
  cfg = _cfg(shared_mlp_dim=8)
  params = init_params(cfg, jax.random.key(0))
  tokens, pads = decode.left_pad([[3, 4, 5, 6], [7, 8, 9, 10]])
  new = np.asarray(jax.jit(decode.make_generate(cfg, 6))(params, tokens, pads,
                                                         jax.random.key(0)))
  full = np.concatenate([tokens, new], axis=1)
  logits = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(params, full)
  np.testing.assert_array_equal(np.argmax(logits[:, 3:-1], axis=-1), new)
  assert len(set(new.ravel().tolist())) > 1
