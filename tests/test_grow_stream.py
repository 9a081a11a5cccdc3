"""Streamed offline growth (growjax/growth/stream.py): the checkpoint written piece by
piece restores to the same TrainState, bit for bit, as the whole-state path's, for the
depth operators that copy, zero and draw new layers, width growth and grown Adam
moments; it is an ordinary step (manifest, integrity check, orbax tree metadata equal to
a whole save's); growths that cannot stream fall back and say why."""

import json
import os

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import config as config_lib
from growjax.train import state as state_lib
from growjax.growth import offline, stream
from growjax.growth import spec as spec_lib
from growjax.model import ModelConfig
from tiny import tiny_base

SMALL = dict(vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
             head_dim=16, mlp_dim=128, dtype="float32")


def _cfg(**model):
  c = tiny_base()
  c.model = config_lib.model_config("tiny", **{**SMALL, **model})
  return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A small checkpoint at step 7 with nonzero Adam moments (one real update)."""
  d = str(tmp_path_factory.mktemp("src"))
  setup = state_lib.build(_cfg())
  st = state_lib.init_state(setup, jax.random.key(1))
  grads = jax.tree.map(lambda p: 0.01 * jax.numpy.ones_like(p), st.params)
  _, opt = jax.jit(setup.tx.update)(grads, st.opt_state, st.params)
  st = st.replace(step=jax.numpy.asarray(7, jax.numpy.int32), opt_state=opt)
  ck = ckpt_lib.Checkpoints(d, use_async=False)
  ck.save(7, st, {"windows_consumed": 56}, state_lib.run_meta(setup), force=True)
  ck.wait()
  return d


def _grown(src, out, large_cfg, stream_it, **kw):
  lines = []
  report = offline.grow_checkpoint(src, out, large_cfg, stream=stream_it, log=lines.append,
                                   **kw)
  assert (f"; streamed in {report['pieces']} pieces" if stream_it is not False else
          "; whole state at once (stream=False)") in lines[0]
  ck = ckpt_lib.Checkpoints(out, use_async=False)
  step = ck.latest_step()
  state, data, meta = ck.restore(step, state_lib.build(large_cfg).abstract_state)
  return report, step, state, data, meta


@pytest.mark.parametrize("method,width,opt_state,large", [
    ("stack", None, "reset", dict(num_layers=4)),
    ("zero", "direct", "grow", dict(num_layers=4, embed_dim=128, num_heads=8,
                                    num_kv_heads=4, mlp_dim=256)),
])
def test_streamed_growth_is_bit_identical_to_the_whole_state_path(
    source, tmp_path, method, width, opt_state, large):
  large_cfg = _cfg(**large)
  kw = dict(method=method, width_method=width, opt_state=opt_state, seed=3)
  whole = _grown(source, str(tmp_path / "whole"), large_cfg, False, **kw)
  streamed = _grown(source, str(tmp_path / "streamed"), large_cfg, True, **kw)
  assert whole[0]["streamed"] is False and streamed[0]["streamed"] is True
  assert streamed[0]["pieces"] > 1
  assert whole[1] == streamed[1] == 7                       # the step carried over
  a, b = whole[2], streamed[2]
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.sharding == y.sharding, jax.tree_util.keystr(path)
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
  assert whole[3] == streamed[3] == {"windows_consumed": 56}
  assert whole[4]["grown_from"] == streamed[4]["grown_from"]

  # An ordinary step: same orbax tree metadata as a whole save, a file manifest, intact.
  steps = {k: os.path.join(tmp_path, k, "7") for k in ("whole", "streamed")}
  meta = {k: json.load(open(os.path.join(d, "state", "_METADATA")))["tree_metadata"]
          for k, d in steps.items()}
  assert meta["whole"] == meta["streamed"]
  assert os.path.exists(os.path.join(steps["streamed"], ckpt_lib.FILES))
  assert ckpt_lib.verify_step(steps["streamed"]) is None
  assert sorted(os.listdir(tmp_path / "streamed")) == ["7", offline.MARKER]


def test_pieces_read_only_their_own_source_leaves():
  """Depth growth: each grown leaf reads its one source leaf; reset moments read
  nothing; no piece exceeds the costliest single leaf (its inputs + itself)."""
  small, large = _cfg(), _cfg(num_layers=4)
  setup = state_lib.build(large)
  meta = {"model": small.model.to_dict(), "config": small.to_dict()}
  src_model, src_tx, src_abstract = offline.source_setup(meta, setup)
  spec = spec_lib.resolve(src_model, setup.model_cfg, "stack", None, None)
  fn = offline.grow_function(spec, src_tx, setup, opt_state="reset", schedule="continue")
  with jax.set_mesh(setup.mesh):
    plan = stream.plan(fn, src_abstract, jax.random.key(0), setup.abstract_state,
                       setup.state_shardings)
  n_const = len(plan.consts)
  for piece in plan.pieces:
    outs = {jax.tree_util.keystr(plan.out_paths[j]) for j in piece.outputs}
    ins = {jax.tree_util.keystr(plan.in_paths[k - n_const]) for k in piece.inputs
           if k >= n_const}
    # every param read is a param written in this piece (mu / nu / step read nothing)
    assert ins <= {o for o in outs if o.startswith(".params")} | {".step"}, (outs, ins)
  gate = 4 * 64 * 128 * 4    # the largest leaves: 4 layers of (64, 128) float32
  assert plan.peak_piece_bytes <= gate + gate // 2 + 4096


def test_growths_that_cannot_stream_fall_back_and_say_why():
  src, dst = ModelConfig(**SMALL), ModelConfig(**{**SMALL, "embed_dim": 128, "num_heads": 8,
                                                  "num_kv_heads": 4, "mlp_dim": 256})
  assert offline._why_not_streamed(spec_lib.resolve(src, src, "stack", None, None)) is None
  zero = spec_lib.resolve(src, dst, "zero", "zero", None)    # norm_eps not rescaled
  assert zero.inexact
  assert "logit change" in offline._why_not_streamed(zero)
  learn = spec_lib.resolve(src, ModelConfig(**{**SMALL, "num_layers": 4}), "learn", None,
                           None)
  assert "learn" in offline._why_not_streamed(learn)
  stack = spec_lib.resolve(src, src, "stack", None, None)
  assert "gs://" in offline._why_not_streamed(stack, "gs://bucket/grown")
