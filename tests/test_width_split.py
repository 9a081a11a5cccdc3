"""Width `split` (growjax/growth/width.py): `direct` with zero-sum noise on the copies.

It keeps the float32 logits (mlp, heads with and without kv growth, a whole embed
factor; tied and untied), breaks every copy's symmetry (values at once for input-side
copies, gradients at once for output-side ones, and after one step every copy of every
grown leaf differs, where `direct`'s stay equal), is deterministic in the seed, equal
on a mesh and without, streams bit-identically to the whole-state path, maps Adam
moments as `direct`, and refuses a bad `width_noise` in one line."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import config as config_lib
from growjax import sharding
from growjax.train import state as state_lib
from growjax.growth import grow, grow_opt_state, layout, learn, offline, width
from growjax.model import (EMBED, HEADS, KV_HEADS, MLP, ModelConfig, Transformer, init_params,
                           logical_axes)
from tiny import tiny_base

S = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=48, dtype="float32")
GROWN = {  # what grows: mlp, heads (kv heads too / kept: 4 query heads per kv head), embed
    "mlp": dict(mlp_dim=96), "heads_gqa": dict(num_heads=8, num_kv_heads=4),
    "heads_kv_kept": dict(num_heads=8), "embed": dict(embed_dim=64),
    "all": dict(embed_dim=64, mlp_dim=96, num_heads=8, num_kv_heads=4),
    "odd": dict(mlp_dim=80, num_heads=6),   # non-integer factors: some units copied once
}
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
KEY = jax.random.key(7)
# float32 logits of the grown model against the small one, max |diff| / max |small|.
# `direct` itself moves them by ~3e-7 here (summing c copies of W/c rounds differently);
# split's copies W/c + N_i sum to W up to a few ulps of the noise, so the bound is ~30
# float32 ulps of the logits' scale: an order above both, far below any real change
# (a non-zero-sum noise of 0.1 moves them by ~1e-2).
LOGIT_TOL = 1e-5


def _params(cfg, seed=0):
  """Initialised params with non-trivial norm scales (as after training)."""
  p = jax.jit(lambda k: init_params(cfg, k))(jax.random.key(seed))
  for i, leaf in enumerate((p["final_norm"], p["layers"]["mlp_norm"], p["layers"]["attn_norm"])):
    leaf["scale"] = leaf["scale"] * (1 + 0.3 * jax.random.normal(jax.random.key(100 + i),
                                                                 leaf["scale"].shape))
  return p


@functools.lru_cache(maxsize=None)
def _jit_logits(cfg):
  return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _copies(x, axis: int, m: width.AxisMap):
  """(copies of unit 0 .. g-1, other axes...): the copies of every small unit, for a
  whole-factor map (a tiling (A, g, B) of the small axis)."""
  a, g, b = m.tiling
  y = np.moveaxis(np.asarray(x), axis, 0)
  return y.reshape((a, g, b) + y.shape[1:]).swapaxes(0, 1)


def _all_copies_differ(x, axis, m) -> bool:
  c = _copies(x, axis, m)
  diff = np.abs(c[1:] - c[:1])          # every copy against copy 0, per small unit
  return bool(np.all(diff.reshape(diff.shape[0], diff.shape[1] * diff.shape[2], -1)
                     .max(axis=-1) > 0))


def _all_copies_equal(x, axis, m) -> bool:
  c = _copies(x, axis, m)
  return bool(np.array_equal(c[1:], np.broadcast_to(c[:1], c[1:].shape)))


# Tying matters only where embed grows (the division moves into the final norm); all
# axes at once (untied) is checked in test_every_copy_is_broken_....
@pytest.mark.parametrize("what,tied", [("mlp", False), ("heads_gqa", False),
                                       ("heads_kv_kept", True), ("embed", False),
                                       ("embed", True), ("all", True), ("odd", False)])
def test_split_keeps_the_float32_logits(what, tied):
  src = S.replace(tie_embeddings=tied)
  dst = src.replace(**GROWN[what])
  small = _params(src)
  split = grow(small, src, dst, width_method="split", rng=KEY)
  assert _rel(_jit_logits(dst)(split, TOKENS), _jit_logits(src)(small, TOKENS)) < LOGIT_TOL


def test_every_copy_is_broken_and_direct_leaves_them_equal():
  """At growth: the copies of a leaf with a divided (input-side) axis differ in value;
  a leaf with none (output-side copies only) has equal copies whose gradients differ. After one SGD step every copy of every grown leaf differs;
  under `direct` every copy is still equal. The logits are kept, and only because the
  noise sums to zero: the same noise as |N_i| moves them by orders of magnitude more
  than LOGIT_TOL."""
  dst = S.replace(**GROWN["all"])
  small = _params(S)
  maps = width.plan(S, dst)
  batch = jax.random.randint(jax.random.key(3), (2, 17), 0, 64)
  grad = jax.jit(jax.grad(lambda p: learn.lm_loss(p, dst, batch)))
  sgd = lambda p, g: jax.tree.map(lambda x, gx: x - 0.05 * gx, p, g)
  split = grow(small, S, dst, width_method="split", rng=KEY)
  direct = grow(small, S, dst, width_method="direct")
  want = _jit_logits(S)(small, TOKENS)
  assert _rel(_jit_logits(dst)(split, TOKENS), want) < LOGIT_TOL
  not_zero_sum = jax.tree.map(lambda d, s: d + jnp.abs(s - d), direct, split)
  assert _rel(_jit_logits(dst)(not_zero_sum, TOKENS), want) > 1e-3
  g0 = grad(split)
  named = lambda tree: dict(zip(
      ["/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]],
      jax.tree.leaves(tree)))
  table = named(jax.tree.map(lambda p: p, layout.params_of(dst), is_leaf=layout.is_param))
  at_growth, g_at_growth = named(split), named(g0)
  after, after_direct = named(sgd(split, g0)), named(sgd(direct, grad(direct)))
  checked = 0
  for path, p in table.items():
    divided = width.divided_axes(p, maps, dst.tie_embeddings)
    for i, axis in enumerate(p.axes):
      if axis not in maps:
        continue
      m = maps[axis]
      if divided:   # noise on this leaf: its copies differ along every grown axis
        assert _all_copies_differ(at_growth[path], i, m), (path, axis)
      else:         # copied exactly, but read by noisy weights: gradients differ
        assert _all_copies_equal(at_growth[path], i, m), (path, axis)
        assert _all_copies_differ(g_at_growth[path], i, m), (path, axis, "gradient")
      assert _all_copies_differ(after[path], i, m), (path, axis, "after a step")
      assert _all_copies_equal(after_direct[path], i, m), (path, axis, "direct")
      checked += 1
  assert checked == 19   # every grown axis of every leaf (embed, mlp, heads, kv heads)
  assert {EMBED, MLP, HEADS, KV_HEADS} == set(maps)


def test_deterministic_in_the_seed_and_scaled_by_width_noise():
  dst = S.replace(**GROWN["mlp"])
  small = _params(S)
  down = lambda key, noise=None: np.asarray(grow(
      small, S, dst, width_method="split", rng=key, width_noise=noise)["layers"]["mlp"]["down"])
  direct = np.asarray(grow(small, S, dst, width_method="direct")["layers"]["mlp"]["down"])
  a = down(jax.random.key(5))
  np.testing.assert_array_equal(a, down(jax.random.key(5)))
  assert not np.array_equal(a, down(jax.random.key(6)))
  # noise std = width_noise x RMS(W) / c per entry, per layer (c = 2 copies per mlp unit)
  w = np.asarray(small["layers"]["mlp"]["down"])
  rms = np.sqrt((w ** 2).mean(axis=(1, 2)))
  for noise in (0.1, 0.4):
    n = down(jax.random.key(5), noise) - direct
    np.testing.assert_allclose(n[:, :48] + n[:, 48:], 0, atol=1e-6 * np.abs(w).max())
    std = n.reshape(n.shape[0], -1).std(axis=1)
    np.testing.assert_allclose(std, noise * rms / 2, rtol=0.1)


def test_split_under_jit_on_a_mesh_equals_unplaced_up_to_rounding():
  dst = S.replace(**GROWN["all"])
  small = _params(S)
  want = grow(small, S, dst, width_method="split", rng=KEY)
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  specs = jax.tree.map(lambda names: P(*names), logical_axes(dst),
                       is_leaf=lambda x: isinstance(x, tuple))
  out = sharding.logical_to_sharding(specs, mesh, sharding.DEFAULT_RULES)
  placed = jax.jit(functools.partial(grow, src=S, dst=dst, width_method="split", mesh=mesh,
                                     rules=sharding.DEFAULT_RULES), out_shardings=out)(
      small, rng=KEY)
  assert placed["layers"]["attn"]["q"].sharding == NamedSharding(
      mesh, P(None, "fsdp", "tensor", None))
  # Same random bits; the per-layer RMS is a reduction over sharded axes, whose
  # per-device partial sums round differently: ~1 float32 ulp of the leaf's scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0,
                                                       atol=1e-6 * np.abs(b).max()),
               placed, want)


def test_moments_are_mapped_as_direct():
  dst = S.replace(**GROWN["all"])
  tx = optax.adam(1e-3)
  small = _params(S)
  grads = jax.tree.map(lambda x: jax.random.normal(KEY, x.shape), small)
  _, s = jax.jit(tx.update)(grads, tx.init(small), small)
  split = grow_opt_state(s, tx, S, dst, width_method="split", mode="grow")
  direct = grow_opt_state(s, tx, S, dst, width_method="direct", mode="grow")
  assert int(split[0].count) == 1
  assert jax.tree.all(jax.tree.map(np.array_equal, split, direct))


# --------------------------------------------------------------- offline growth, the CLI

SMALL_RUN = dict(vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128, dtype="float32")
WIDE_RUN = dict(SMALL_RUN, embed_dim=128, num_heads=8, num_kv_heads=4, mlp_dim=256)


def _cfg(**model):
  c = tiny_base()
  c.model = config_lib.model_config("tiny", **{**SMALL_RUN, **model})
  return c


LARGE_FILE = """from test_width_split import _cfg, WIDE_RUN
def get_config(arg=None):
  return _cfg(**WIDE_RUN)
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A small checkpoint at step 3 with nonzero Adam moments."""
  d = str(tmp_path_factory.mktemp("src"))
  setup = state_lib.build(_cfg())
  st = state_lib.init_state(setup, jax.random.key(1))
  grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), st.params)
  _, opt = jax.jit(setup.tx.update)(grads, st.opt_state, st.params)
  st = st.replace(step=jnp.asarray(3, jnp.int32), opt_state=opt)
  ck = ckpt_lib.Checkpoints(d, use_async=False)
  ck.save(3, st, {"windows_consumed": 24}, state_lib.run_meta(setup), force=True)
  ck.wait()
  return d


def test_streamed_split_is_bit_identical_to_the_whole_state_path(source, tmp_path):
  """Each leaf's noise is drawn from fold_in(key, its path): a piece that grows some
  leaves draws exactly what the whole growth draws for them."""
  large = _cfg(**WIDE_RUN)
  states = {}
  for mode in (False, True):
    out = str(tmp_path / str(mode))
    report = offline.grow_checkpoint(source, out, large, method="stack",
                                     width_method="split", width_noise=0.2, opt_state="reset",
                                     seed=4, stream=mode, log=lambda *_: None)
    assert report["streamed"] is mode and (report["pieces"] or 0) > (1 if mode else -1)
    states[mode], _, meta = ckpt_lib.Checkpoints(out, use_async=False).restore(
        3, state_lib.build(large).abstract_state)
    assert meta["grown_from"]["width_method"] == "split"
    assert meta["grown_from"]["width_noise"] == 0.2
  a, b = states[False], states[True]
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
  o = np.asarray(a.params["layers"]["attn"]["o"])    # noise really is there
  assert not np.array_equal(o[:, :4], o[:, 4:])


@pytest.mark.parametrize("flag,shown", [("--width_noise=-0.5", "--width_noise=-0.5"),
                                        ("--width_noise=nan", "--width_noise=nan"),
                                        ("--width_noise=0", "--width_noise=0.0")])
def test_bad_width_noise_is_refused_in_one_line(source, tmp_path, capsys, monkeypatch, flag,
                                               shown):
  monkeypatch.setattr(offline, "_restore", lambda *a: pytest.fail("read the checkpoint"))
  config = tmp_path / "large.py"
  config.write_text(LARGE_FILE)
  code = cli.main(["growjax", "grow", f"--from={source}", f"--to={tmp_path / 'out'}",
                   f"--config={config}", "--width_method=split", flag])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err == (f"growjax grow: {shown} is not a noise scale — give a finite number > 0 "
                 f"(relative to a split copy's RMS, e.g. 1.0); for no noise use "
                 f"--width_method=direct")
  assert not (tmp_path / "out").exists()


def test_grow_run_refuses_bad_width_noise_before_the_small_stage():
  cfg = _cfg(**WIDE_RUN)
  cfg.growth.enabled, cfg.growth.small_model = True, config_lib.model_config("tiny", **SMALL_RUN)
  cfg.growth.width_method, cfg.growth.width_noise = "split", -1.0
  with pytest.raises(ValueError, match=r"^config.growth.width_noise=-1.0 is not a noise "
                                       r"scale — give a finite number > 0"):
    offline.check_grow_run(cfg)
  cfg.growth.width_noise = 0.3
  assert offline.check_grow_run(cfg).width_noise == 0.3
