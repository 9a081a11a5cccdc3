"""μP and depth-μP (growjax.model.mup): base equals SP, the coordinate check is flat
under μP and not under SP, growth keeps the logits where the operator claims to, the
learning-rate multipliers, and one-line refusals through the console."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growjax.growth import grow, grow_opt_state
from growjax.model import Transformer, init_params, logical_axes, mup, param_table
from growjax.train import mup_check
from growjax.train import optimizer as opt_lib


def toy(width=64, depth=2, par="mup", alpha=1.0, base_width=64, base_depth=2):
  return mup_check.toy_config(width, depth, par, base_width=base_width,
                              base_depth=base_depth, alpha=alpha, head_dim=16)


TOKENS = (jnp.arange(48)[None] * 7 + 3) % 256


def logits(cfg, params):
  return Transformer(cfg).apply({"params": params}, TOKENS)


def test_mup_at_its_base_shape_is_sp_exactly():
  sp, mu = toy(par="sp"), toy(par="mup")
  p_sp, p_mu = init_params(sp, jax.random.key(0)), init_params(mu, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(p_sp), jax.tree.leaves(p_mu)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(logits(sp, p_sp), logits(mu, p_mu))


def test_multipliers_follow_width_and_depth():
  cfg = toy(width=256, depth=8, alpha=0.5)          # m = 4, L / L0 = 4
  table = param_table(cfg)
  assert mup.width_multiplier(cfg) == 4.0
  assert mup.branch_multiplier(cfg) == 0.5           # (2 / 8)^0.5
  assert mup.logit_multiplier(cfg) == 0.25
  q = table["layers"]["attn"]["q"]
  assert mup.lr_multiplier(q, cfg) == pytest.approx(0.25 * 0.5)   # 1/m x (L0/L)^(1-alpha)
  assert mup.lr_multiplier(table["embedding"], cfg) == 1.0
  assert mup.lr_multiplier(table["lm_head"], cfg) == 1.0
  assert mup.lr_multiplier(table["layers"]["mlp_norm"]["scale"], cfg) == 1.0
  assert mup.init_std(q, cfg) == pytest.approx(0.02 / 2)
  assert mup.init_std(table["layers"]["mlp"]["down"], cfg) == pytest.approx(0.02 / 2 / 2)
  assert mup.init_std(table["embedding"], cfg) == 0.02
  # CompleteP: branches 1/L, learning rates constant in depth.
  cp = toy(width=256, depth=8, alpha=1.0)
  assert mup.branch_multiplier(cp) == 0.25
  assert mup.lr_multiplier(param_table(cp)["layers"]["attn"]["q"], cp) == 0.25
  # The optimizer applies them: a params-shaped tree of multipliers.
  mults = opt_lib.lr_multipliers(cp)
  assert mults["layers"]["mlp"]["up"] == 0.25 and mults["embedding"] == 1.0
  # The measured init: hidden matrices shrink as 1/sqrt(m).
  p = init_params(toy(width=1024, depth=2, base_width=64), jax.random.key(0))
  assert float(jnp.std(p["layers"]["mlp"]["up"])) == pytest.approx(0.02 / 4, rel=0.02)
  assert float(jnp.std(p["embedding"])) == pytest.approx(0.02, rel=0.02)


@pytest.mark.slow
def test_coordinate_check_is_flat_under_mup_and_not_under_sp():
  """Yang et al.'s coordinate check over a 16x width range (32 -> 512), Adam at lr 1e-2:
  after 3 steps the change of the logits and of the last block's output keep their
  size under μP (within 2x) and grow with the width under SP."""
  def last(width, par):
    cfg = mup_check.toy_config(width, 2, par, base_width=32, head_dim=16, vocab=128)
    return mup_check.coord_check(cfg, lr=1e-2, steps=3, batch=2, seq_len=32)["steps"][-1]

  for key in ("d_logits", "d_layer1"):
    mu = [last(w, "mup")[key] for w in (32, 512)]
    sp = [last(w, "sp")[key] for w in (32, 512)]
    assert max(mu) / min(mu) < 2.0, (key, mu)
    assert sp[1] / sp[0] > 4.0, (key, sp)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_function_keeping_growth_keeps_logits_under_mup(alpha):
  src = toy(depth=2, alpha=alpha)
  params = init_params(src, jax.random.key(0))
  # Train-like writers: the zero-init-free check needs non-trivial block outputs.
  before = logits(src, params)
  for method, depth in (("zero", 8), ("llama_pro", 4)):
    dst = toy(depth=depth, alpha=alpha)
    grown = grow(params, src, dst, method, rng=jax.random.key(1))
    np.testing.assert_allclose(logits(dst, grown), before, rtol=0, atol=2e-6)
  wide = toy(width=128, depth=2, alpha=alpha)
  grown = grow(params, src, wide, "stack")                    # width direct
  np.testing.assert_allclose(logits(wide, grown), before, rtol=0, atol=2e-6)


def test_stack_under_completep_copies_weights_and_lets_the_multiplier_scale():
  """G_stack keeps weights; under CompleteP each of the 4 copies writes 1/4, so the
  stacked model stays closer to the small one than under Depth-μP (measured)."""
  changes = {}
  for alpha in (0.5, 1.0):
    src, dst = toy(depth=2, alpha=alpha), toy(depth=8, alpha=alpha)
    params = init_params(src, jax.random.key(0))
    grown = grow(params, src, dst, "stack")
    np.testing.assert_array_equal(grown["layers"]["attn"]["o"][4:6], params["layers"]["attn"]["o"])
    changes[alpha] = float(jnp.abs(logits(dst, grown) - logits(src, params)).max())
  assert 0 < changes[1.0] < changes[0.5]


def test_grown_moments_follow_the_rescaled_writers():
  src, dst = toy(depth=2, alpha=0.5), toy(depth=8, alpha=0.5)  # writers x 2 under zero
  params = init_params(src, jax.random.key(0))
  tx = opt_lib.make_optimizer(mup_check._opt_config(1e-3), lambda s: 1e-3,
                              logical_axes(src), src)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = tx.update(grads, tx.init(params), params)
  tx_dst = opt_lib.make_optimizer(mup_check._opt_config(1e-3), lambda s: 1e-3,
                                  logical_axes(dst), dst)
  grown = grow_opt_state(state, tx_dst, src, dst, "zero", mode="grow")
  adam = grown[1][0]
  mu_o = adam.mu["layers"]["attn"]["o"]
  nu_o = adam.nu["layers"]["attn"]["o"]
  old_mu = state[1][0].mu["layers"]["attn"]["o"]
  kept = np.array([0, 4])   # zero's layer map (0, -1, -1, -1, 1, -1, -1, -1)
  np.testing.assert_allclose(mu_o[kept], old_mu / 2, rtol=1e-6)
  np.testing.assert_allclose(nu_o[kept], state[1][0].nu["layers"]["attn"]["o"] / 4, rtol=1e-6)
  np.testing.assert_array_equal(mu_o[1], 0.0)
  np.testing.assert_array_equal(adam.mu["embedding"], state[1][0].mu["embedding"])


def test_growth_across_parametrizations_is_refused():
  src = toy(depth=2)
  dst = toy(depth=4).replace(mup_base_num_layers=4)
  with pytest.raises(ValueError, match="growth keeps the parametrization and its base"):
    grow(init_params(src, jax.random.key(0)), src, dst, "stack")


def _console(*args):
  return subprocess.run([sys.executable, "-m", "growjax", *args], check=False, capture_output=True,
                        text=True, timeout=120)


def test_console_refuses_mup_without_a_base_width(tmp_path):
  r = _console("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
               "--config.model.parametrization=mup")
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "mup_base_embed_dim" in lines[0] and " — " in lines[0], r.stderr
  r = _console("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"),
               "--config.model.parametrization=mop")
  assert r.returncode == 2 and "choose 'sp' (standard) or 'mup'" in r.stderr, r.stderr


@pytest.mark.slow
def test_late_recipe_under_mup_runs_end_to_end(tmp_path):
  """configs/grow.py:recipe=late,mup=1 through the console: the 1-layer μP model grows
  into the 8-layer one (the multipliers carried), and both stages record μP."""
  import json
  w = tmp_path / "late"
  r = _console("train", "--config", "configs/grow.py:recipe=late,mup=1,scratch_steps=8",
               "--workdir", str(w), "--config.train.eval_every=0",
               "--config.optimizer.warmup_steps=2", "--config.data.seq_len=64",
               "--config.train.global_batch_size=8", "--config.train.loss_chunk_len=64")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads((w / "summary.json").read_text())
  assert np.isfinite(summary["final_train_loss"]) if "final_train_loss" in summary else True
  for stage, layers in (("small", 1), ("large", 8)):
    metas = list((w / stage / "checkpoints").glob("*/meta/*"))
    text = " ".join(p.read_text() for p in metas if p.is_file())
    assert '"parametrization": "mup"' in text and f'"num_layers": {layers}' in text, stage


def test_decoding_computes_the_mup_model():
  """KV-cache decoding (sample, generation) applies μP's multipliers as the model does:
  prefill logits equal the model's, away from the base shape (m = 2, L / L0 = 2,
  head_dim 16 against a base of 32)."""
  from growjax.model import decode
  cfg = toy(width=128, depth=4, alpha=0.5).replace(mup_base_head_dim=32)
  params = init_params(cfg, jax.random.key(3))
  tokens = np.asarray(TOKENS)
  got = np.asarray(logits(cfg, params))
  b, t = tokens.shape
  empty = {k: np.zeros((cfg.num_layers, b, t, cfg.num_kv_heads, cfg.head_dim), np.float32)
           for k in ("k", "v")}
  prefill, _ = decode.forward(cfg, params, tokens, np.broadcast_to(np.arange(t), (b, t)),
                              empty, 0, np.ones((b, t), bool))
  np.testing.assert_allclose(np.asarray(prefill), got, rtol=1e-5, atol=1e-5 * np.abs(got).max())


@pytest.mark.slow
def test_export_folds_the_multipliers_into_plain_weights(tmp_path):
  """A μP checkpoint away from its base shape exports to a plain LLaMA (HF has no
  multipliers) whose import computes the same logits."""
  from growjax.interop import params_io
  w, out, back = tmp_path / "w", tmp_path / "hf", tmp_path / "back"
  r = _console("train", "--config", "configs/tiny.py", "--workdir", str(w),
               "--config.train.steps=2", "--config.train.eval_every=0",
               "--config.model.parametrization=mup", "--config.model.mup_base_embed_dim=64",
               "--config.model.mup_base_num_layers=2", "--config.model.mup_depth_alpha=0.5",
               "--config.model.mup_base_head_dim=16", "--config.model.dtype=float32",
               "--config.train.final_sample_tokens=0")
  assert r.returncode == 0, r.stderr[-2000:]
  r = _console("inspect", str(w))
  assert r.returncode == 0 and "μP, base 64 wide x 2 layers, depth alpha 0.5" in r.stdout, r.stdout
  r = _console("export-hf", f"--from={w}", f"--to={out}")
  assert r.returncode == 0 and "folded" in r.stdout + r.stderr, r.stderr[-2000:]
  r = _console("import-hf", f"--from={out}", f"--to={back}", "--dtype=float32")
  assert r.returncode == 0, r.stderr[-2000:]
  a, b = params_io.load(str(w)), params_io.load(str(back))
  assert a.model_cfg.parametrization == "mup" and b.model_cfg.parametrization == "sp"
  la = Transformer(a.model_cfg.for_exact_logits()).apply({"params": a.params}, TOKENS % 384)
  lb = Transformer(b.model_cfg.for_exact_logits()).apply({"params": b.params}, TOKENS % 384)
  np.testing.assert_allclose(np.asarray(lb), np.asarray(la), rtol=0,
                             atol=1e-5 * float(np.abs(la).max()))


@pytest.mark.parametrize("experts", [0, 4])
def test_folding_into_plain_weights_keeps_the_function(experts):
  """`fold_into_sp` (export's step): the SP model on the folded weights computes the μP
  model, dense or a mixture of experts."""
  cfg = toy(width=128, depth=4, alpha=0.5)
  if experts:
    cfg = cfg.replace(num_experts=experts, experts_per_token=2, expert_mlp_dim=64)
  params = init_params(cfg, jax.random.key(0))
  folded = mup.fold_into_sp(params, cfg)
  want = logits(cfg, params)
  np.testing.assert_allclose(logits(cfg.replace(parametrization="sp"), folded), want,
                             rtol=0, atol=1e-6 * float(jnp.abs(want).max()) + 1e-7)
