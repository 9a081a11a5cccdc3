"""Growth operators: placement, function preservation, init statistics, LiGO, bad pairs,
optimizer state, jit and sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import model, sharding
from growjax.growth import depth, grow, grow_opt_state, layout, learn, width
from growjax.growth import spec as spec_lib
from growjax.growth.operators import InexactGrowthWarning
from growjax.model import ModelConfig, Transformer, init_params, logical_axes

S = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=48, dtype="float32")
WIDE = S.replace(embed_dim=64, mlp_dim=96, num_heads=8, num_kv_heads=4)  # x2, kv grows
WIDE_KV = S.replace(embed_dim=64, mlp_dim=96, num_heads=8)             # x2, kv kept: 4 per group
ODD = S.replace(embed_dim=48, mlp_dim=80, num_heads=6)                 # non-integer factors
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
KEY = jax.random.key(7)


@functools.lru_cache(maxsize=None)
def _jit_init(cfg):
  return jax.jit(lambda k: init_params(cfg, k))


def _params(cfg, seed=0):
  """Initialised params with non-trivial norm scales (as after training)."""
  p = _jit_init(cfg)(jax.random.key(seed))
  noise = lambda x, k: x * (1 + 0.3 * jax.random.normal(k, x.shape))
  p["final_norm"]["scale"] = noise(p["final_norm"]["scale"], jax.random.key(seed + 100))
  p["layers"]["mlp_norm"]["scale"] = noise(p["layers"]["mlp_norm"]["scale"],
                                           jax.random.key(seed + 101))
  return p


@functools.lru_cache(maxsize=None)
def _jit_logits(cfg):
  return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))


def _logits(cfg, p):
  return _jit_logits(cfg)(p, TOKENS)


@functools.lru_cache(maxsize=None)
def _jit_loss(cfg):
  return jax.jit(lambda p, t: learn.lm_loss(p, cfg, t))


@functools.lru_cache(maxsize=None)
def _jit_grad(cfg):
  return jax.jit(jax.grad(lambda p, t: learn.lm_loss(p, cfg, t)))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _assert_shapes(params, cfg):
  ref = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, ref)


def _layers(tree):
  """Per-layer leaves (all have `layers` first in this model)."""
  return jax.tree.leaves(tree["layers"])


# ----------------------------------------------------------------------------- depth maps

def test_preset_maps():
  assert depth.preset_map("stack", 6, 24) == tuple(range(6)) * 4
  assert depth.preset_map("interpolate", 3, 6) == (0, 0, 1, 1, 2, 2)
  assert depth.preset_map("interpolate", 2, 3) == (0, 0, 1)
  assert depth.preset_map("stack_bottom", 6, 10) == (0, 1, 0, 1, 0, 1, 2, 3, 4, 5)
  assert depth.preset_map("stack_middle", 6, 10) == (0, 1, 2, 3, 2, 3, 2, 3, 4, 5)
  assert depth.preset_map("stack_top", 6, 10) == (0, 1, 2, 3, 4, 5, 4, 5, 4, 5)
  assert depth.preset_map("stack_bottom", 4, 6) == (0, 1, 0, 1, 2, 3)   # parts [0,1] [2] [3]
  assert depth.preset_map("stack_top", 4, 7) == (0, 1, 2, 3, 3, 3, 3)
  assert depth.insert_map(2, 4) == (0, -1, 1, -1)
  assert depth.insert_map(2, 5) == (0, -1, 1, -1, -1)


L3 = S.replace(num_layers=3)


@pytest.mark.parametrize("method,layer_map,expected", [
    ("stack", None, [0, 1, 2, 0, 1, 2]),
    ("interpolate", None, [0, 0, 1, 1, 2, 2]),
    ("stack_bottom", None, [0, 0, 0, 0, 1, 2]),
    ("stack_middle", None, [0, 1, 1, 1, 1, 2]),
    ("stack_top", None, [0, 1, 2, 2, 2, 2]),
    ("direct", (2, 1, 0, 0, 1, 2), [2, 1, 0, 0, 1, 2]),
])
def test_depth_direct_places_small_layers(method, layer_map, expected):
  dst = L3.replace(num_layers=6)
  small = _params(L3)
  big = grow(small, L3, dst, method, layer_map=layer_map)
  _assert_shapes(big, dst)
  for s, b in zip(_layers(small), _layers(big)):
    np.testing.assert_array_equal(b, s[np.array(expected)])
  for key in ("embedding", "final_norm", "lm_head"):
    assert jax.tree.all(jax.tree.map(np.array_equal, big[key], small[key]))


@pytest.mark.parametrize("layer_map,old_at", [(None, [0, 2]), ((0, 1, -1, -1), [0, 1])])
def test_depth_zero_preserves_logits(layer_map, old_at):
  dst = S.replace(num_layers=4)
  small = _params(S)
  big = grow(small, S, dst, "zero", layer_map=layer_map, rng=KEY)
  _assert_shapes(big, dst)
  np.testing.assert_allclose(_logits(dst, big), _logits(S, small), rtol=1e-6, atol=1e-7)
  new_at = [i for i in range(4) if i not in old_at]
  for s, b in zip(_layers(small), _layers(big)):
    np.testing.assert_array_equal(b[np.array(old_at)], s)
  layers = big["layers"]
  for writer in (layers["attn"]["o"], layers["mlp"]["down"]):
    assert not np.any(writer[np.array(new_at)])
  for reader in (layers["attn"]["q"], layers["mlp"]["gate"]):  # trainable, not dead
    assert np.std(reader[np.array(new_at)]) == pytest.approx(S.init_std, rel=0.1)


def test_depth_random_new_layers_have_init_std():
  dst = S.replace(num_layers=4)
  small = _params(S)
  big = grow(small, S, dst, "random", rng=KEY)
  _assert_shapes(big, dst)
  for s, b in zip(_layers(small), _layers(big)):
    np.testing.assert_array_equal(b[np.array([0, 2])], s)
  out_std = dst.init_std / np.sqrt(2 * dst.num_layers)
  layers = big["layers"]
  new = np.array([1, 3])
  for leaf, std in ((layers["attn"]["q"], dst.init_std), (layers["mlp"]["up"], dst.init_std),
                    (layers["attn"]["o"], out_std), (layers["mlp"]["down"], out_std)):
    assert np.std(leaf[new]) == pytest.approx(std, rel=0.1)
  np.testing.assert_array_equal(layers["attn_norm"]["scale"][new], 1.0)
  assert _rel(_logits(dst, big), _logits(S, small)) > 1e-3


# ----------------------------------------------------------------------------- width

@pytest.mark.parametrize("dst", [WIDE, WIDE_KV, S.replace(mlp_dim=80, num_heads=6),
                                 WIDE.replace(tie_embeddings=True)],
                         ids=["x2_kv_grows", "x2_kv_kept", "non_integer_mlp_heads", "tied"])
def test_width_direct_preserves_logits(dst):
  src = S.replace(tie_embeddings=dst.tie_embeddings)
  small = _params(src)
  big = grow(small, src, dst, width_method="direct")
  _assert_shapes(big, dst)
  assert _rel(_logits(dst, big), _logits(src, small)) < 1e-5


def test_width_direct_non_integer_embed_is_refused_unless_allowed():
  small = _params(S)
  with pytest.raises(ValueError, match="not a whole multiple of 32.*allow_inexact=True"):
    grow(small, S, ODD, width_method="direct")
  big = grow(small, S, ODD, width_method="direct", allow_inexact=True)
  _assert_shapes(big, ODD)
  err = _rel(_logits(ODD, big), _logits(S, small))
  assert 1e-5 < err < 0.15  # RMSNorm sees a weighted mean square (about 6% here)


def test_width_direct_copies_units_and_keeps_gqa_groups():
  small = _params(S)
  big = grow(small, S, WIDE_KV, width_method="direct")
  q_s, q_b = small["layers"]["attn"]["q"], big["layers"]["attn"]["q"]
  # 2 kv heads kept; group k holds small heads 2k, 2k+1 then their copies.
  heads = [0, 1, 0, 1, 2, 3, 2, 3]
  np.testing.assert_allclose(q_b[:, :32], q_s[:, :, heads] / 2, rtol=1e-6)
  np.testing.assert_allclose(q_b[:, 32:], q_s[:, :, heads] / 2, rtol=1e-6)
  np.testing.assert_array_equal(big["layers"]["attn"]["k"][:, :32], small["layers"]["attn"]["k"] / 2)
  o_s, o_b = small["layers"]["attn"]["o"], big["layers"]["attn"]["o"]
  np.testing.assert_allclose(o_b, np.tile(o_s[:, heads] / 2, (1, 1, 1, 2)), rtol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_width_zero_preserves_logits(tied):
  src = S.replace(tie_embeddings=tied)
  dst = WIDE.replace(tie_embeddings=tied)
  small = _params(src)
  ref = _logits(src, small)
  # Exact when the norm epsilon follows the mean square (eps * E / E').
  exact = dst.replace(norm_eps=src.norm_eps * src.embed_dim / dst.embed_dim)
  big = grow(small, src, exact, width_method="zero", rng=KEY)
  _assert_shapes(big, dst)
  assert _rel(_logits(exact, big), ref) < 1e-5
  # Same epsilon: off by ~eps / mean(x^2), small even at init scale.
  assert _rel(_logits(dst, big), ref) < 0.05
  np.testing.assert_array_equal(big["embedding"][:, 32:], 0.0)
  layers = big["layers"]
  assert not np.any(layers["mlp"]["down"][:, 48:]) and not np.any(layers["attn"]["o"][:, :, :, 32:])
  assert np.std(layers["mlp"]["gate"][:, :, 48:]) == pytest.approx(S.init_std, rel=0.1)
  np.testing.assert_allclose(layers["attn_norm"]["scale"][:, :32],
                             small["layers"]["attn_norm"]["scale"] * np.sqrt(0.5), rtol=1e-6)


def test_width_random_new_units_have_init_std():
  small = _params(S)
  big = grow(small, S, WIDE, width_method="random", rng=KEY)
  _assert_shapes(big, WIDE)
  a_s, a_b = small["layers"]["mlp"], big["layers"]["mlp"]
  np.testing.assert_array_equal(a_b["gate"][:, :32, :48], a_s["gate"])
  np.testing.assert_array_equal(a_b["down"][:, :48, :32], a_s["down"])
  np.testing.assert_array_equal(big["embedding"][:, :32], small["embedding"])
  q_b = big["layers"]["attn"]["q"]
  np.testing.assert_array_equal(q_b[:, :32, :4], small["layers"]["attn"]["q"])  # groups 0, 1
  out_std = WIDE.init_std / np.sqrt(2 * WIDE.num_layers)
  assert np.std(a_b["gate"][:, :, 48:]) == pytest.approx(WIDE.init_std, rel=0.1)
  assert np.std(a_b["down"][:, 48:]) == pytest.approx(out_std, rel=0.1)
  assert np.std(big["embedding"][:, 32:]) == pytest.approx(WIDE.init_std, rel=0.1)
  np.testing.assert_array_equal(big["final_norm"]["scale"][32:], 1.0)


# ----------------------------------------------------------------------------- combined, staged

def test_depth_and_width_in_one_call():
  dst = WIDE.replace(num_layers=4, norm_eps=S.norm_eps / 2)
  small = _params(S)
  big = grow(small, S, dst, "zero", rng=KEY)
  _assert_shapes(big, dst)
  assert _rel(_logits(dst, big), _logits(S, small)) < 1e-5
  stacked = grow(small, S, dst, "stack")
  wide = grow(small, S, dst.replace(num_layers=2), width_method="direct")
  staged = grow(wide, dst.replace(num_layers=2), dst, "stack")
  assert jax.tree.all(jax.tree.map(np.array_equal, stacked, staged))


def test_multi_stage_2_4_8():
  small = _params(S)
  l4, l8 = S.replace(num_layers=4), S.replace(num_layers=8)
  twice = grow(grow(small, S, l4, "stack"), l4, l8, "stack")
  once = grow(small, S, l8, "stack")
  assert jax.tree.all(jax.tree.map(np.array_equal, twice, once))
  zero8 = grow(grow(small, S, l4, "zero", rng=KEY), l4, l8, "zero", rng=KEY)
  np.testing.assert_allclose(_logits(l8, zero8), _logits(S, small), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- learn

def test_learn_lowers_its_objective():
  batches = [jax.random.randint(jax.random.key(i), (4, 17), 0, 16) for i in range(2)]
  small = _params(S)
  l4 = S.replace(num_layers=4)
  start = grow(small, S, l4, "stack")
  learned = grow(small, S, l4, "learn", learn_batches=batches, learn_steps=8, learn_lr=3e-2)
  _assert_shapes(learned, l4)
  before = sum(float(_jit_loss(l4)(start, b)) for b in batches)
  after = sum(float(_jit_loss(l4)(learned, b)) for b in batches)
  assert after < before - 1e-3

  start = grow(small, S, WIDE, width_method="direct")
  learned = grow(small, S, WIDE, "learn", learn_batches=batches, learn_steps=8, learn_lr=3e-2)
  _assert_shapes(learned, WIDE)
  before = sum(float(_jit_loss(WIDE)(start, b)) for b in batches)
  after = sum(float(_jit_loss(WIDE)(learned, b)) for b in batches)
  assert after < before - 1e-3


def test_learn_with_zero_steps_is_its_starting_operator():
  batches = [jax.random.randint(jax.random.key(0), (2, 9), 0, 64)]
  small = _params(S)
  got = grow(small, S, WIDE, "learn", learn_batches=batches, learn_steps=0)
  want = grow(small, S, WIDE, width_method="direct")
  assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-7),
                                   got, want))


# ----------------------------------------------------------------------------- bad pairs

@pytest.mark.parametrize("dst,kw,match", [
    (S.replace(vocab_size=128), {}, "vocab_size"),
    (S.replace(head_dim=16), {}, "head_dim"),
    (S.replace(tie_embeddings=True), {}, "tie_embeddings"),
    (S.replace(num_layers=1), {}, "num_layers"),
    (S.replace(mlp_dim=32), {}, "mlp_dim"),
    (S.replace(num_layers=3), {"method": "stack"}, "multiple of src.num_layers"),
    (S.replace(num_layers=4), {"method": "direct", "layer_map": (0, 1, 2, 0)}, "point past"),
    (S.replace(num_layers=4), {"method": "direct", "layer_map": (0, 1, 0)}, "dst.num_layers=4"),
    (S.replace(num_layers=4), {"method": "direct"}, "layer_map"),
    (S.replace(num_layers=4), {"method": "stack", "layer_map": (0, 1, 0, 1)}, "method='direct'"),
    (S.replace(num_layers=4), {"method": "zero", "layer_map": (1, 0, -1, -1)}, "in order"),
    (S.replace(num_layers=4), {"method": "zero"}, "rng"),
    (S.replace(num_layers=4), {"method": "learn"}, "learn_batches"),
    (S.replace(num_layers=3), {"method": "stack_top"}, "num_layers >= 3"),
    (S.replace(num_layers=4), {"method": "grow"}, "method='grow'"),
    (WIDE, {"width_method": "stack"}, "width_method"),
    (S.replace(num_heads=8, num_kv_heads=8), {}, "num_kv_heads"),  # 2 per kv head -> 1
    (S.replace(num_heads=5), {}, "num_heads"),                     # not a GQA multiple
])
def test_bad_pairs_raise(dst, kw, match):
  with pytest.raises(ValueError, match=match):
    grow(_params(S), S, dst, **kw)


def test_growth_reads_roles_from_the_table_not_axis_order():
  assert layout.params_of(S)["layers"]["attn"]["q"] is model.PARAMS["layers/attn/q"]
  maps = width.plan(S, WIDE)
  q = model.PARAMS["layers/attn/q"]  # (layers, embed, heads, head_dim), declared to read
  assert width.divided_axes(q, maps, tied=False) == {1}  # its input: embed
  as_writer = dataclasses.replace(q, role=model.WRITES)  # same axes, another declared role
  assert width.divided_axes(as_writer, maps, tied=False) == {2}  # its input: heads


def test_layer_map_none_or_empty_is_no_map():
  dst = S.replace(num_layers=4)
  for method in ("stack", "zero"):
    assert spec_lib.resolve(S, dst, method, layer_map=[]) == spec_lib.resolve(S, dst, method)
  assert spec_lib.resolve(S, dst, "zero", layer_map=[0, -1, 1, -1]).layer_map == (0, -1, 1, -1)


@pytest.mark.parametrize("names,dst,kw,want", [
    (spec_lib.LIBRARY, S.replace(vocab_size=128), {},
     "dst.vocab_size=128 differs from src.vocab_size=64 — growth keeps the vocabulary: set "
     "dst.vocab_size=64"),
    (spec_lib.CLI, S.replace(tie_embeddings=True), {},
     "config.model.tie_embeddings=True differs from the --from checkpoint's "
     "model.tie_embeddings=False — growth keeps tie_embeddings: set "
     "config.model.tie_embeddings=False"),
    (spec_lib.CLI, S.replace(num_layers=4), {"method": "direct", "layer_map": [0, 1, 2, 5]},
     "--layer_map=0,1,2,5: entries [2, 5] point past the small model"),
    (spec_lib.CLI, S.replace(num_layers=4), {"g": 3},
     "--g=3 but config.model.num_layers=4 is not 3 x"),
    (spec_lib.GROW_RUN, S.replace(num_layers=4), {"layer_map": [0, 1, 0, 1]},
     "config.growth.layer_map=[0, 1, 0, 1] is given but config.growth.method='stack' is a "
     "preset"),
    (spec_lib.CLI, ODD, {}, "or pass --allow_inexact to accept the change"),
], ids=["vocab", "tied", "map_range", "g", "preset_with_map", "inexact"])
def test_errors_name_the_input_as_written_and_the_fix(names, dst, kw, want):
  with pytest.raises(ValueError) as e:
    spec_lib.resolve(S, dst, names=names, **kw)
  msg = str(e.value)
  assert want in msg and " — " in msg and "\n" not in msg and "head_dim" not in msg


def test_refusals_that_need_no_arrays():
  learn_spec = spec_lib.resolve(S, S.replace(num_layers=4), "learn")
  with pytest.raises(ValueError, match="--opt_state=grow cannot follow 'learn'.*--opt_state=reset"):
    learn_spec.check_opt_state("grow", spec_lib.CLI)
  assert spec_lib.resolve(S, WIDE, "zero").inexact == spec_lib.INEXACT_NORM_EPS
  assert spec_lib.resolve(S, WIDE.replace(norm_eps=S.norm_eps / 2), "zero").inexact == ""
  assert spec_lib.resolve(S, WIDE.replace(embed_dim=32), "zero").inexact == ""  # embed kept
  with pytest.warns(InexactGrowthWarning, match=r"dst.norm_eps=5e-06 \(src.norm_eps x 32/64\)"):
    grow(_params(S), S, WIDE, width_method="zero", rng=KEY)


# ----------------------------------------------------------------------------- optimizer state

def _adam_step(cfg, tx):
  @jax.jit
  def step(p, s, tokens):
    g = _jit_grad(cfg)(p, tokens)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  return step


def test_grown_opt_state_matches_small_step_under_depth_zero():
  tx = optax.adamw(1e-2, weight_decay=0.1)
  dst = S.replace(num_layers=4)
  batch = jax.random.randint(jax.random.key(3), (4, 17), 0, 64)
  p, s = _params(S), None
  s = tx.init(p)
  small_step = _adam_step(S, tx)
  for _ in range(3):
    p, s = small_step(p, s, batch)
  big_p = grow(p, S, dst, "zero", rng=KEY)
  big_s = grow_opt_state(s, tx, S, dst, "zero", mode="grow")
  assert int(big_s[0].count) == 3
  p1, _ = small_step(p, s, batch)
  b1, _ = _adam_step(dst, tx)(big_p, big_s, batch)
  for a, b in zip(_layers(p1), _layers(b1)):
    np.testing.assert_allclose(b[np.array([0, 2])], a, rtol=1e-5, atol=1e-7)
  for key in ("embedding", "lm_head", "final_norm"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7),
                 p1[key], b1[key])
  # New layers got zero moments, and their output projections moved off zero.
  assert not np.any(big_s[0].mu["layers"]["attn"]["q"][np.array([1, 3])])
  assert np.any(b1["layers"]["attn"]["o"][np.array([1, 3])])


@pytest.mark.parametrize("dst,method", [(WIDE, "direct"), (WIDE_KV, "direct"),
                                        (WIDE.replace(tie_embeddings=True), "direct"),
                                        (WIDE.replace(norm_eps=S.norm_eps / 2), "zero")],
                         ids=["direct", "direct_kv_kept", "direct_tied", "zero"])
def test_grown_moments_are_the_grown_models_gradient_moments(dst, method):
  """One Adam update from zero leaves mu = (1-b1) g, nu = (1-b2) g^2: the grown state
  must hold exactly that for the grown model's own gradient (zero for new entries)."""
  src = S.replace(tie_embeddings=dst.tie_embeddings)
  tx = optax.adam(1e-3, b1=0.9, b2=0.95)
  batch = jax.random.randint(jax.random.key(4), (2, 17), 0, 64)
  small = _params(src)
  grad = lambda p, cfg: _jit_grad(cfg)(p, batch)
  _, s = jax.jit(tx.update)(grad(small, src), tx.init(small), small)
  big_s = grow_opt_state(s, tx, src, dst, width_method=method, mode="grow")
  big = grow(small, src, dst, width_method=method, rng=KEY)
  g = grad(big, dst)
  maps = width.plan(src, dst)

  def old(names, x):
    mask = np.ones(x.shape, bool)
    if method == "zero":
      for i, n in enumerate(names):
        if n in maps:
          mask &= maps[n].old.reshape((-1,) + (1,) * (x.ndim - i - 1))
    return mask

  masks = jax.tree.map(old, logical_axes(dst), g, is_leaf=lambda x: isinstance(x, tuple))
  for got, want, m in zip(jax.tree.leaves(big_s[0].mu), jax.tree.leaves(g),
                          jax.tree.leaves(masks)):
    np.testing.assert_allclose(got, np.where(m, 0.1 * want, 0.0), rtol=2e-4,
                               atol=2e-5 * np.abs(want).max())
  for got, want, m in zip(jax.tree.leaves(big_s[0].nu), jax.tree.leaves(g),
                          jax.tree.leaves(masks)):
    np.testing.assert_allclose(got, np.where(m, 0.05 * want ** 2, 0.0), rtol=5e-4,
                               atol=5e-5 * (want ** 2).max())


def test_opt_state_reset_and_refusals():
  tx = optax.adamw(1e-3)
  small = _params(S)
  dst = S.replace(num_layers=4)
  _, s = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, small), tx.init(small), small)
  big = grow(small, S, dst, "stack")
  fresh = grow_opt_state(s, tx, S, dst, "stack", mode="reset", params=big)
  assert int(fresh[0].count) == 0 and not any(np.any(x) for x in jax.tree.leaves(fresh[0].mu))
  _assert_shapes(fresh[0].nu, dst)
  carried = grow_opt_state(s, tx, S, dst, "stack", mode="grow")
  assert int(carried[0].count) == 1
  np.testing.assert_array_equal(carried[0].nu["layers"]["mlp"]["up"][2:],
                                s[0].nu["layers"]["mlp"]["up"])
  with pytest.raises(ValueError, match="params"):
    grow_opt_state(s, tx, S, dst, "stack", mode="reset")
  with pytest.raises(ValueError, match="reset"):
    grow_opt_state(s, tx, S, dst, "learn", mode="grow")


# ----------------------------------------------------------------------------- jit, sharding

def test_jit_and_out_shardings():
  small = _params(S)
  dst = WIDE.replace(num_layers=4)
  static = ("src", "dst", "method", "width_method", "layer_map")
  eager = grow(small, S, dst, "zero", rng=KEY)
  jitted = jax.jit(grow, static_argnames=static)(small, S, dst, "zero", rng=KEY)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-6, atol=0),
                                   eager, jitted))

  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  specs = jax.tree.map(lambda names: P(*names), logical_axes(dst),
                       is_leaf=lambda x: isinstance(x, tuple))
  out = sharding.logical_to_sharding(specs, mesh, sharding.DEFAULT_RULES)
  placed = jax.jit(grow, static_argnames=static, out_shardings=out)(
      small, S, dst, "direct", layer_map=(1, 0, 1, 0))
  q = placed["layers"]["attn"]["q"]
  assert q.sharding == NamedSharding(mesh, P(None, "fsdp", "tensor", None))
  want = grow(small, S, dst, "direct", layer_map=(1, 0, 1, 0))
  assert jax.tree.all(jax.tree.map(np.array_equal, placed, want))


def test_width_direct_adam_step_moves_each_divided_copy_by_the_full_step():
  """The grown moments are the grown model's own (above), but Adam's update is
  scale-free: a copy holding 1/c of a weight moves by the small model's whole step,
  so under width `direct` one step does not reproduce the small model's step."""
  tx = optax.adam(1e-2)
  batch = jax.random.randint(jax.random.key(3), (4, 17), 0, 64)
  small_step = _adam_step(S, tx)
  p, s = _params(S), tx.init(_params(S))
  p, s = small_step(p, s, batch)
  big = grow(p, S, WIDE_KV, width_method="direct")
  big_s = grow_opt_state(s, tx, S, WIDE_KV, width_method="direct", mode="grow")
  p1, _ = small_step(p, s, batch)
  b1, _ = _adam_step(WIDE_KV, tx)(big, big_s, batch)
  up, up1 = p["layers"]["mlp"]["up"], p1["layers"]["mlp"]["up"]  # (layers, embed, mlp)
  big_up, big_up1 = big["layers"]["mlp"]["up"], b1["layers"]["mlp"]["up"]
  np.testing.assert_allclose(big_up[:, :32, :48], up / 2, rtol=1e-6)  # embed divided by 2
  step, big_step = up1 - up, big_up1[:, :32, :48] - big_up[:, :32, :48]
  np.testing.assert_allclose(big_step, step, rtol=1e-3, atol=1e-4)  # ... moved the whole step
  assert float(jnp.linalg.norm(big_step) / jnp.linalg.norm(step)) == pytest.approx(1, abs=1e-3)
  assert _rel(_logits(WIDE_KV, b1), _logits(S, p1)) > 0.01
