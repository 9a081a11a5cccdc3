"""Depth presets `llama_pro`, `solar` and `middle` (growjax/growth/depth.py): their layer
maps, `llama_pro` keeping the logits with zero-writer copies, copies equal to the mapped
source layers, the map recorded in a grown checkpoint (and shown by `growjax inspect`),
and bad sizes refused in one line through the CLI before any compute."""

import functools

import jax
import numpy as np
import optax
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import config as config_lib
from growjax.train import state as state_lib
from growjax.growth import depth, grow, layout, offline
from growjax.growth import spec as spec_lib
from growjax.model import WRITES, ModelConfig, Transformer, init_params
from tiny import tiny_base

S4 = ModelConfig(vocab_size=64, num_layers=4, embed_dim=32, num_heads=4, num_kv_heads=2,
                 head_dim=8, mlp_dim=48, dtype="float32")
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)


@pytest.mark.parametrize("method,n_src,n_dst,expected", [
    ("llama_pro", 4, 6, (0, 1, 1, 2, 3, 3)),
    ("llama_pro", 4, 8, (0, 0, 1, 1, 2, 2, 3, 3)),
    ("llama_pro", 6, 8, (0, 1, 2, 2, 3, 4, 5, 5)),
    ("llama_pro", 4, 5, (0, 1, 2, 3, 3)),
    ("solar", 4, 6, (0, 1, 2, 1, 2, 3)),
    ("solar", 4, 8, (0, 1, 2, 3, 0, 1, 2, 3)),
    ("solar", 32, 48, tuple(range(24)) + tuple(range(8, 32))),
    ("middle", 8, 12, (0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7)),
    ("middle", 8, 10, (0, 1, 2, 3, 4, 5, 2, 3, 6, 7)),
    ("middle", 4, 7, (0, 1, 2, 1, 2, 1, 3)),
    ("middle", 2, 5, (0, 1, 0, 1, 0)),
])
def test_preset_layer_maps(method, n_src, n_dst, expected):
  src = S4.replace(num_layers=n_src)
  spec = spec_lib.resolve(src, src.replace(num_layers=n_dst), method)
  assert spec.layer_map == expected
  zeroed = tuple(i for i in range(1, n_dst) if expected[i] == expected[i - 1])
  assert spec.zero_writers == (zeroed if method == "llama_pro" else False)
  assert not spec.needs_rng                      # copies only: nothing is drawn


def _params(cfg, seed=0):
  """Initialised params with non-trivial norm scales and every layer different."""
  p = jax.jit(lambda k: init_params(cfg, k))(jax.random.key(seed))
  noise = lambda x, k: x * (1 + 0.3 * jax.random.normal(k, x.shape))
  p["final_norm"]["scale"] = noise(p["final_norm"]["scale"], jax.random.key(seed + 100))
  p["layers"]["mlp_norm"]["scale"] = noise(p["layers"]["mlp_norm"]["scale"],
                                           jax.random.key(seed + 101))
  return p


@functools.lru_cache(maxsize=None)
def _jit_logits(cfg):
  return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))


def _per_layer(cfg, tree):
  """[(param, leaf with the layer axis first)] for every per-layer leaf."""
  out = []
  layout.map_leaves(lambda p, x: out.append(
      (p, np.moveaxis(np.asarray(x), layout.layer_axis(p), 0)))
      if layout.layer_axis(p) is not None else None, cfg, tree)
  return out


def test_llama_pro_keeps_logits_and_copies_with_zero_writers():
  dst = S4.replace(num_layers=6)
  small = _params(S4)
  grown = grow(small, S4, dst, "llama_pro")
  np.testing.assert_allclose(_jit_logits(dst)(grown, TOKENS),
                             _jit_logits(S4)(small, TOKENS), rtol=0, atol=1e-6)
  lmap, inserted = (0, 1, 1, 2, 3, 3), {2, 5}
  writers = 0
  for (p, x), (_, y) in zip(_per_layer(S4, small), _per_layer(dst, grown)):
    for i, j in enumerate(lmap):
      if i in inserted and p.role == WRITES:
        assert not y[i].any()
      else:
        np.testing.assert_array_equal(y[i], x[j])
    writers += p.role == WRITES
  assert writers == 2                             # attn o and mlp down, read from the table


@pytest.mark.parametrize("method,n_dst", [("solar", 6), ("middle", 7)])
def test_copying_presets_place_the_mapped_source_layers(method, n_dst):
  dst = S4.replace(num_layers=n_dst)
  small = _params(S4, seed=3)
  grown = grow(small, S4, dst, method)
  lmap = depth.preset_map(method, 4, n_dst)
  for (_, x), (_, y) in zip(_per_layer(S4, small), _per_layer(dst, grown)):
    assert y.shape[0] == n_dst
    for i, j in enumerate(lmap):
      np.testing.assert_array_equal(y[i], x[j])


# --------------------------------------------------------------- grown checkpoints, CLI

SMALL = dict(vocab_size=256, num_layers=4, embed_dim=64, num_heads=4, num_kv_heads=2,
             head_dim=16, mlp_dim=128, dtype="float32")


def _cfg(**model):
  c = tiny_base()
  c.model = config_lib.model_config("tiny", **{**SMALL, **model})
  return c


LARGE_FILE = """from test_growth_presets import _cfg
def get_config(arg=None):
  return _cfg(num_layers={layers})
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A 4-layer checkpoint at step 3 with nonzero Adam moments (one real update)."""
  d = str(tmp_path_factory.mktemp("src"))
  setup = state_lib.build(_cfg())
  st = state_lib.init_state(setup, jax.random.key(1))
  grads = jax.tree.map(lambda p: 0.01 * jax.numpy.ones_like(p), st.params)
  _, opt = jax.jit(setup.tx.update)(grads, st.opt_state, st.params)
  st = st.replace(step=jax.numpy.asarray(3, jax.numpy.int32), opt_state=opt)
  ck = ckpt_lib.Checkpoints(d, use_async=False)
  ck.save(3, st, None, state_lib.run_meta(setup), force=True)
  ck.wait()
  return d


@pytest.mark.parametrize("method,n_dst,lmap", [
    ("llama_pro", 6, [0, 1, 1, 2, 3, 3]),
    ("solar", 6, [0, 1, 2, 1, 2, 3]),
    ("middle", 7, [0, 1, 2, 1, 2, 1, 3]),
])
def test_grown_checkpoint_records_the_preset_map(source, tmp_path, capsys, method, n_dst,
                                                 lmap):
  out = str(tmp_path / "grown")
  large_cfg = _cfg(num_layers=n_dst)
  # llama_pro through the streamed path (pieces of the traced growth), the others whole.
  report = offline.grow_checkpoint(source, out, large_cfg, method=method, opt_state="grow",
                                   stream=method == "llama_pro", log=lambda *_: None)
  assert report["streamed"] is (method == "llama_pro")
  ck = ckpt_lib.Checkpoints(out, use_async=False)
  state, _, meta = ck.restore(3, state_lib.build(large_cfg).abstract_state)
  g = meta["grown_from"]
  assert (g["method"], g["layer_map"], g["opt_state"]) == (method, lmap, "grow")
  if method == "llama_pro":
    # Adam moments follow the map like any copied layer's: the inserted layer 2 has
    # layer 1's moments, also for its zeroed output projection.
    mu = optax.tree_utils.tree_get(state.opt_state, "mu")["layers"]["attn"]["o"]
    np.testing.assert_array_equal(np.asarray(mu[2]), np.asarray(mu[1]))
    assert np.asarray(mu[1]).any()
    assert not np.asarray(state.params["layers"]["attn"]["o"][2]).any()
  assert cli.main(["growjax", "inspect", out]) == 0
  assert f"by {method}, layer map {lmap}" in capsys.readouterr().out


@pytest.mark.parametrize("method,n_dst,want", [
    ("llama_pro", 7, "growjax grow: --method=llama_pro inserts config.model.num_layers - "
     "the --from checkpoint's model.num_layers = 7 - 4 = 3 new layers, one after every 4/3 "
     "small layers, which is not whole — set config.model.num_layers=6 (4 + a divisor of "
     "4: 5, 6, 8)"),
    ("solar", 7, "growjax grow: --method=solar joins two copies of the 4 small layers with "
     "m dropped at the seam, so config.model.num_layers = 2 x 4 - 2m must be even and in "
     "5..8, got 7 — set config.model.num_layers=6 (or any even value in that range)"),
    ("solar", 10, "growjax grow: --method=solar joins two copies of the 4 small layers with "
     "m dropped at the seam, so config.model.num_layers = 2 x 4 - 2m must be even and in "
     "5..8, got 10 — set config.model.num_layers=8 (or any even value in that range)"),
])
def test_bad_sizes_are_refused_in_one_line(source, tmp_path, capsys, method, n_dst, want):
  config = tmp_path / "large.py"
  config.write_text(LARGE_FILE.format(layers=n_dst))
  out = tmp_path / "grown"
  code = cli.main(["growjax", "grow", f"--from={source}", f"--to={out}",
                   f"--config={config}", f"--method={method}"])
  assert code != 0
  assert capsys.readouterr().err.strip() == want
  assert not out.exists()                         # refused before anything was written


def test_grow_run_configs_take_the_presets():
  from tiny import grow_config         # 2 -> 4 layers
  assert offline.check_grow_run(grow_config("llama_pro")).layer_map == (0, 0, 1, 1)
  assert offline.check_grow_run(grow_config("middle")).layer_map == (0, 1, 0, 1)
  cfg = grow_config("solar")
  cfg.model.num_layers = 3
  with pytest.raises(ValueError, match=r"^config.growth.method='solar' joins two copies .* "
                     r"must be even and in 3..4, got 3 — set config.model.num_layers=4 "):
    offline.check_grow_run(cfg)
