"""Growth into experts (growjax.growth.experts) by what it claims: dense -> MoE copy and
granular upcycling and E -> 2E expert growth keep the logits (float32), also composed with
depth growth; Drop-Upcycling re-draws exactly its fraction of units and moves the logits
by a measured amount; the optimizer state follows; bad combinations are refused."""

import json
import os
import shutil
import warnings

import jax
import numpy as np
import optax
import pytest

from growjax import cli
from growjax.growth import experts, grow, grow_opt_state, resolve, stages
from growjax.growth.operators import InexactGrowthWarning
from growjax.model import ModelConfig, Transformer, logical_axes
from growjax.model import init_params as _init_params
from growjax.train import optimizer as opt_lib
from tiny import ROOT

init_params = jax.jit(_init_params, static_argnums=0)

DENSE = ModelConfig(vocab_size=64, num_layers=2, embed_dim=16, num_heads=2, num_kv_heads=2,
                    head_dim=8, mlp_dim=32, dtype="float32")
TOKENS = np.random.default_rng(0).integers(0, 64, (2, 12)).astype(np.int32)


def _moe(**kw):
  return DENSE.replace(**dict(dict(num_experts=4, experts_per_token=2, expert_mlp_dim=32), **kw))


def _logits(cfg, params):
  return np.asarray(jax.jit(lambda p: Transformer(cfg.for_exact_logits()).apply(
      {"params": p}, TOKENS))(params))


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


PARAMS = init_params(DENSE, jax.random.key(0))
DENSE_LOGITS = _logits(DENSE, PARAMS)


@pytest.mark.parametrize("dst", [
    _moe(),                                                   # copies, random router
    _moe(num_experts=8, experts_per_token=4, expert_mlp_dim=8),   # granular, G = 4
    _moe(num_experts=4, experts_per_token=2, expert_mlp_dim=16,   # granular, softmax_topk
         moe_router="softmax_topk"),
], ids=["copy", "granular", "granular-softmax_topk"])
def test_dense_to_moe_keeps_the_logits(dst):
  grown = grow(PARAMS, DENSE, dst, rng=jax.random.key(1))
  assert set(grown["layers"]) == {"attn", "attn_norm", "mlp_norm", "moe"}
  assert _rel(DENSE_LOGITS, _logits(dst, grown)) < 2e-6
  router = grown["layers"]["moe"]["router"]
  assert bool(np.any(router != 0)) == experts.random_router(DENSE, dst)


def test_granular_experts_are_the_dense_units_scaled():
  dst = _moe(num_experts=8, experts_per_token=4, expert_mlp_dim=8)
  grown = grow(PARAMS, DENSE, dst)["layers"]
  mlp, moe = PARAMS["layers"]["mlp"], grown["moe"]
  # expert 5 is segment 1 (units 8..15); topk_softmax weight 1/4, G = 4: down x 4 / (4/4)
  np.testing.assert_array_equal(moe["gate"][:, :, 5], mlp["gate"][:, :, 8:16])
  np.testing.assert_array_equal(moe["down"][:, 5], 4.0 * mlp["down"][:, 8:16])
  assert experts.down_scale(DENSE, dst) == 4.0


def test_upcycling_composes_with_depth_growth():
  dst = _moe().replace(num_layers=4)
  grown = grow(PARAMS, DENSE, dst, method="zero", rng=jax.random.key(2))
  assert grown["layers"]["moe"]["gate"].shape == (4, 16, 4, 32)
  assert _rel(DENSE_LOGITS, _logits(dst, grown)) < 2e-6


def test_experts_double_and_keep_the_logits():
  src = _moe(shared_mlp_dim=8)
  params = init_params(src, jax.random.key(3))
  dst = src.replace(num_experts=8, experts_per_token=4)
  grown = grow(params, src, dst)
  assert grown["layers"]["moe"]["router"].shape == (2, 16, 8)
  np.testing.assert_array_equal(grown["layers"]["moe"]["up"][:, :, 6],
                                params["layers"]["moe"]["up"][:, :, 2])
  assert _rel(_logits(src, params), _logits(dst, grown)) < 2e-6


def test_drop_upcycling_redraws_its_fraction_and_reports_the_change():
  dst = _moe()
  with pytest.warns(InexactGrowthWarning, match="Drop-Upcycling"):
    grown = grow(PARAMS, DENSE, dst, rng=jax.random.key(4), drop_fraction=0.5)
  exact = grow(PARAMS, DENSE, dst, rng=jax.random.key(4))
  changed = np.any(grown["layers"]["moe"]["gate"] != exact["layers"]["moe"]["gate"], axis=1)
  assert changed.shape == (2, 4, 32)
  np.testing.assert_array_equal(changed.sum(-1), 16)     # r x 32 units of every expert
  down_changed = np.any(grown["layers"]["moe"]["down"] != exact["layers"]["moe"]["down"], -1)
  np.testing.assert_array_equal(down_changed, changed)    # the same units' down rows
  change = _rel(DENSE_LOGITS, _logits(dst, grown))
  assert 1e-3 < change < 1.0


def test_optimizer_state_follows_the_upcycling():
  dst = _moe(num_experts=8, experts_per_token=4, expert_mlp_dim=8).replace(num_layers=4)

  def tx(cfg):
    return opt_lib.make_optimizer(_opt_cfg(), optax.constant_schedule(1e-3),
                                  logical_axes(cfg))

  grads = jax.tree.map(lambda x: 0.1 * x, PARAMS)
  state = jax.jit(lambda g, p: tx(DENSE).update(g, tx(DENSE).init(p), p)[1])(grads, PARAMS)
  new = jax.jit(lambda s: grow_opt_state(s, tx(DENSE), DENSE, dst, "stack", mode="grow"))(
      state)
  want = jax.eval_shape(tx(dst).init, jax.eval_shape(
      lambda p: grow(p, DENSE, dst, method="stack"), PARAMS))
  assert jax.tree.structure(new) == jax.tree.structure(want)
  adam = new[1][0]
  mu_src, nu_src = state[1][0].mu["layers"]["mlp"], state[1][0].nu["layers"]["mlp"]
  mu, nu = adam.mu["layers"]["moe"], adam.nu["layers"]["moe"]
  # layer 3 is small layer 1 (stack); expert 6 is segment 2; down scaled by 4
  np.testing.assert_array_equal(mu["up"][3, :, 6], mu_src["up"][1, :, 16:24])
  np.testing.assert_allclose(mu["down"][3, 6], 4 * mu_src["down"][1, 16:24])
  np.testing.assert_allclose(nu["down"][3, 6], 16 * nu_src["down"][1, 16:24])
  assert not np.any(mu["router"]) and int(adam.count) == 1


def _opt_cfg():
  import ml_collections
  return ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                        clip_norm=1.0, decay_embeddings=False,
                                        decay_norms=False))


@pytest.mark.parametrize("dst,drop,match", [
    (_moe(expert_mlp_dim=12), 0.0, "expert_mlp_dim=12 does not divide src.mlp_dim=32"),
    (_moe(expert_mlp_dim=8), 0.0, "experts_per_token=2 is not a multiple of the 4 segments"),
    (_moe(shared_mlp_dim=8), 0.0, "upcycling into a shared expert is not built"),
    (_moe(), 1.0, "drop_fraction=1.0"),
    (_moe().replace(mlp_dim=64), 0.0, "the experts and the widths"),
])
def test_bad_upcycling_is_refused_before_compute(dst, drop, match):
  with pytest.raises(ValueError, match=match):
    resolve(DENSE, dst, drop_fraction=drop)


def test_bad_expert_growth_is_refused():
  with pytest.raises(ValueError, match="experts_per_token=2: expert growth copies"):
    resolve(_moe(), _moe(num_experts=8, experts_per_token=2))
  with pytest.raises(ValueError, match="growth does not turn experts back"):
    resolve(_moe(), DENSE)
  with pytest.raises(ValueError, match="width growth of a mixture of experts is not built"):
    resolve(_moe(), _moe(embed_dim=32))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert resolve(DENSE, _moe()).experts == experts.UPCYCLE


# --- a grow run dense -> MoE: configs/grow.py:recipe=upcycle ---------------------------

RUN_OVERRIDES = dict(steps=6, checkpoint_every=2, log_every=1, eval_every=0,
                     global_batch_size=8)


def _recipe(arg):
  import importlib.util
  spec = importlib.util.spec_from_file_location("grow_cfg", f"{ROOT}/configs/grow.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.train.update(RUN_OVERRIDES)
  c.data.seq_len = 32
  c.growth.small_steps = 3
  c.metrics.tensorboard = False
  return c


def _rows(workdir):
  out = {}
  for stage in ("small", "large"):
    for line in open(os.path.join(workdir, stage, "metrics.jsonl")):
      row = json.loads(line)
      if "loss" in row:
        out[row["step"]] = row
  return out


@pytest.mark.slow
def test_recipe_upcycle_runs_end_to_end_and_resumes_exactly(tmp_path, capsys, data_dir):
  arg = "recipe=upcycle,experts=4,depth=8"
  whole = tmp_path / "whole"
  argv = ["growjax", "train", f"--config={ROOT}/configs/grow.py:{arg}",
          f"--workdir={whole}", "--config.metrics.tensorboard=False",
          "--config.data.seq_len=32", "--config.growth.small_steps=3",
          *(f"--config.train.{k}={v}" for k, v in RUN_OVERRIDES.items())]
  assert cli.main(argv) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert "by stack + experts upcycle at step 3" in out, out
  rows = _rows(whole)
  assert sorted(rows) == list(range(1, 7))
  assert "moe_balance_loss" not in rows[3] and rows[4]["moe_dropped"] == 0.0
  assert {f"moe_balance_l{i}" for i in range(8)} <= set(rows[4])
  # The same run killed after the MoE stage's step 4 (its checkpoint of step 6 never
  # written) and rerun: it resumes the grown MoE model and its Adam state exactly.
  resumed = tmp_path / "resumed"
  shutil.copytree(whole, resumed)
  shutil.rmtree(resumed / "large" / "checkpoints" / "6")
  stages.run(_recipe(arg), str(resumed))
  logged = [json.loads(line)["step"] for line in open(resumed / "large" / "metrics.jsonl")]
  assert [s for s in logged if s > 4] == [5, 6, 5, 6]      # the rerun trained 5 and 6 again
  again = _rows(resumed)
  for step in (5, 6):
    assert again[step]["loss"] == rows[step]["loss"], step
    assert again[step]["moe_balance_l7"] == rows[step]["moe_balance_l7"], step
