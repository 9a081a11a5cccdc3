"""MSG-style masked growth (growjax/growth/masks.py, growjax/mask_ramp.py): with the
masks at 0 the grown model computes the small model's logits for stack, random and
zero-free depth growth and for width random / direct (embed included); the ramp's
values; the grown checkpoint's record -> a grow run whose masks are in the train state,
resumed mid-ramp bit for bit, and gone from the compute (and the program) after the
ramp; the mask-free step untouched; growths that cannot be masked refused in one line."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.train import mask_ramp
from growjax.train import state as state_lib
from growjax import train
from growjax.growth import grow, masks, offline
from growjax.growth import spec as spec_lib
from growjax.model import transformer as model_lib   # masked_units is patched below
from growjax.model import ModelConfig, Transformer, init_params
from tiny import tiny_base

S = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=48, dtype="float32")
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)


@functools.lru_cache(maxsize=None)
def _params(cfg, seed=0):
  """Initialised params with non-trivial norm scales (so a wrong norm count shows)."""
  def make(k):
    p = init_params(cfg, k)
    noise = lambda x, k: x * (1 + 0.3 * jax.random.normal(k, x.shape))
    p["final_norm"]["scale"] = noise(p["final_norm"]["scale"], jax.random.key(seed + 100))
    p["layers"]["attn_norm"]["scale"] = noise(p["layers"]["attn_norm"]["scale"],
                                              jax.random.key(seed + 101))
    return p
  return jax.jit(make)(jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def _logits(cfg):
  return jax.jit(lambda p, t, m=None: Transformer(cfg).apply({"params": p}, t, masks=m))


def _plan(spec, ramp=4):
  record = masks.record(spec)
  return mask_ramp.from_grown({"grown_from": {"masks": record}}, 0, ramp, "test")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("method,width_method,dst", [
    ("stack", None, S.replace(num_layers=4)),
    # random layers and random units of every width axis (embed, mlp, query and kv heads)
    ("random", "random", S.replace(num_layers=4, embed_dim=64, mlp_dim=96, num_heads=8,
                                   num_kv_heads=4)),
    ("stack", "direct", S.replace(embed_dim=64, mlp_dim=96, num_heads=8, num_kv_heads=4)),
], ids=["stack", "random+width_random", "width_direct"])
def test_masks_at_zero_keep_the_logits(method, width_method, dst):
  small = _params(S)
  grown = grow(small, S, dst, method, width_method=width_method, rng=jax.random.key(7))
  plan = _plan(spec_lib.resolve(S, dst, method, width_method))
  want = _logits(S)(small, TOKENS)
  at = lambda step: _logits(dst)(grown, TOKENS, jax.jit(plan.values)(jnp.int32(step)))
  assert _rel(at(0), want) < 2e-6
  if method == "random":
    plain = _logits(dst)(grown, TOKENS)
    assert _rel(plain, want) > 1e-3          # without the masks the logits move
    assert _rel(at(plan.end), plain) < 2e-6  # at 1 the masks are the plain grown model
  if width_method == "direct" and dst.num_layers == S.num_layers:
    # direct's copies already keep the function: the masks only part the copies (kept
    # unit c - (c-1) m, copy m), so the logits are kept all along the ramp.
    assert _rel(at(2), want) < 2e-6


def test_record_marks_new_layers_and_units():
  dst = S.replace(num_layers=4, embed_dim=64, mlp_dim=96, num_heads=8)
  rec = masks.record(spec_lib.resolve(S, dst, "stack", "direct"))
  assert rec["layers"] == [[1, 2], [0, 2]]            # stack: the second copy is new
  assert rec["mlp"] == [[2, 48], [0, 48]]             # direct: kept units carry count 2
  assert rec["embed"] == [[2, 32], [0, 32]]
  # query heads: each of the 2 kv groups keeps its 2 small heads, then 2 new ones.
  assert mask_ramp.decode(rec["heads"]) == (2, 2, 0, 0, 2, 2, 0, 0)
  rec = masks.record(spec_lib.resolve(S, S.replace(num_layers=5), "random",
                                      layer_map=(0, -1, 1, -1, -1)))
  assert rec == {"layers": [[1, 1], [0, 1], [1, 1], [0, 2]]}
  rec = masks.record(spec_lib.resolve(S, S.replace(num_layers=3), "llama_pro"))
  assert mask_ramp.decode(rec["layers"]) == (1, 1, 0)   # the zero-writer copy is new
  # width zero: no embed mask (its norm scales assume E' components)
  rec = masks.record(spec_lib.resolve(S, S.replace(embed_dim=64, mlp_dim=96), "zero"))
  assert set(rec) == {"mlp"}
  assert masks.record(spec_lib.resolve(S, S.replace(num_layers=4), "learn")) is None
  assert masks.record(spec_lib.resolve(S, S.replace(num_layers=4), "direct",
                                       layer_map=(1, 0, 1, 0))) is None


def test_ramp_values():
  plan = mask_ramp.Plan(10, 4, (("layers", (1.0, 0.0)), ("mlp", (2.0, 0.0))))
  got = {s: jax.device_get(jax.jit(plan.values)(jnp.int32(s))) for s in (9, 10, 11, 12, 14, 20)}
  for s, m in ((9, 0.0), (10, 0.0), (11, 0.25), (12, 0.5), (14, 1.0), (20, 1.0)):
    np.testing.assert_array_equal(got[s]["layers"], [1.0, m])
    np.testing.assert_array_equal(got[s]["mlp"], [2.0 - m, m])
  assert plan.end == 14 and plan.active(13) and not plan.active(14)
  assert mask_ramp.Plan.from_meta(json.loads(json.dumps(plan.to_meta()))) == plan


# --------------------------------------------------------------- a grown run with a ramp

def run_config(ramp=3, num_layers=4):
  c = tiny_base(num_layers=num_layers)
  c.train.update(steps=9, log_every=1, eval_every=0, eval_batches=1,
                 checkpoint_every=2, async_checkpointing=False)
  c.metrics.tensorboard = False
  c.optimizer.update(warmup_steps=2, peak_lr=1e-3)
  c.growth.mask_ramp_steps = ramp
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r for r in rows if "loss" in r}


def _state_keys(step_dir):
  with open(os.path.join(step_dir, "state", "_METADATA")) as f:
    return json.load(f)["tree_metadata"].keys()


@pytest.fixture(scope="module")
def grown_dir(tmp_path_factory):
  """A 2-layer checkpoint at step 4, grown by `stack` into 4 layers (offline growth,
  the grow run's stage 2; `stack` draws nothing: the cheapest growth to compile)."""
  d = tmp_path_factory.mktemp("msg")
  small = state_lib.build(run_config(num_layers=2), jax.devices()[:1])
  ck = ckpt_lib.Checkpoints(str(d / "small"), use_async=False)
  st = state_lib.init_state(small, jax.random.key(1)).replace(step=jnp.int32(4))
  ck.save(4, st, None, state_lib.run_meta(small), force=True)
  ck.wait()
  offline.grow_checkpoint(str(d / "small"), str(d / "grown"), run_config(), method="stack",
                          log=lambda *_: None)
  return str(d / "grown")


def test_grown_run_ramps_resumes_exactly_and_drops_the_masks(grown_dir, tmp_path, data_dir,
                                                              capsys):
  meta = ckpt_lib.read_meta(grown_dir, 4)
  # stack 2 -> 4 layers: the second copy of the small layers is new.
  assert meta["grown_from"]["masks"] == {"layers": [[1, 2], [0, 2]]}
  cfg = run_config()
  cfg.train.init_from = grown_dir
  one = jax.devices()[:1]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  straight = train.train(cfg, a, devices=one)
  console = capsys.readouterr()
  assert "MSG mask 0.33" in console.out + console.err   # the ramp on the progress line
  # The ramp: steps 4, 5, 6 are masked (m = 0, 1/3, 2/3), from step 7 on the plain step.
  rows = _metrics(a)
  assert {s: rows[s].get("mask_ramp") for s in rows} == {
      5: 0.0, 6: pytest.approx(1 / 3), 7: pytest.approx(2 / 3), 8: None, 9: None}
  assert any("masks" in k for k in _state_keys(f"{a}/checkpoints/6"))
  assert not any("masks" in k for k in _state_keys(f"{a}/checkpoints/8"))

  # Killed mid-ramp (after step 6) and resumed: the same losses and mask values.
  first = train.train(cfg, b, stop_after_steps=2, devices=one)
  assert first["stopped_at"] == 6
  second = train.train(cfg, b, devices=one)
  assert {**first["loss"], **second["loss"]} == straight["loss"]
  setup = state_lib.build(cfg, one)
  plan = mask_ramp.from_grown(meta, 4, 3, "test")
  saved = []
  for workdir in (a, b):
    st, _, m = ckpt_lib.Checkpoints(f"{workdir}/checkpoints").restore(
        6, train.abstract_state(setup, plan, 6))
    assert mask_ramp.restored(m) == plan
    saved.append(jax.device_get(st.masks["layers"]))
  np.testing.assert_array_equal(saved[0], saved[1])
  np.testing.assert_allclose(saved[0], [1, 1, 2 / 3, 2 / 3], rtol=1e-6)

  # Params alone (export, sample, eval) are the trained model only after the ramp: a
  # mid-ramp step is refused in one line before anything is written, step 8 exports.
  out = tmp_path / "hf"
  assert cli.main(["growjax", "export-hf", f"--from={a}/checkpoints", "--step=6",
                   f"--to={out}"]) == 2
  err = capsys.readouterr().err
  assert "step 6, inside its MSG mask ramp (steps 4..7)" in err and "Traceback" not in err
  assert not out.exists()
  assert cli.main(["growjax", "export-hf", f"--from={a}/checkpoints", "--step=8",
                   f"--to={out}"]) == 0
  assert (out / "config.json").exists()


def test_after_the_ramp_the_step_is_the_plain_program(monkeypatch):
  """The masked step multiplies by the masks; the step the trainer runs once they reach
  1 (their state dropped) is the program of a run that never had masks, which traces
  none of the mask code."""
  setup = state_lib.build(run_config(), jax.devices()[:1])
  plan = mask_ramp.Plan(4, 3, (("layers", (1.0, 0.0, 1.0, 0.0)), ("mlp", (1.0,) * 384)))
  batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=setup.batch_sharding)
           for k in ("inputs", "targets")}
  lower = lambda r, step: train.make_train_step(setup, r).lower(
      train.abstract_state(setup, r, step), batch).as_text()
  masked = lower(plan, 4)

  def no_masks(*_):
    raise AssertionError("the mask-free step traced the masks")
  monkeypatch.setattr(model_lib, "masked_units", no_masks)
  plain, after = lower(None, 4), lower(None, plan.end)
  assert train.abstract_state(setup, plan, plan.end) is setup.abstract_state
  assert after == plain
  mul = lambda text: text.count("stablehlo.multiply")
  assert mul(masked) > mul(plain)
  # The masks are arguments of the masked program only (replicated f32[4] and f32[384]).
  main = lambda text: next(l for l in text.splitlines() if "func.func public @main" in l)
  assert "tensor<4xf32>" in main(masked) and "tensor<384xf32>" in main(masked)
  assert "tensor<4xf32>" not in main(plain) and "tensor<384xf32>" not in main(plain)


@pytest.mark.parametrize("args,match", [
    (["--config=configs/grow.py:recipe=tiny,method=learn",
      "--config.growth.mask_ramp_steps=5"], "'learn' grows by dense learned maps"),
    (["--config=configs/grow.py:recipe=tiny", "--config.growth.mask_ramp_steps=-2"],
     "config.growth.mask_ramp_steps=-2 is not a step count"),
])
def test_bad_mask_ramp_refused_in_one_line(args, match, tmp_path, capsys):
  root = os.path.join(os.path.dirname(__file__), "..")
  args = [a.replace("configs/", os.path.join(root, "configs") + "/") for a in args]
  assert cli.main(["growjax", "train", f"--workdir={tmp_path}"] + args) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax train: ") and match in err and len(err.splitlines()) == 1
  assert os.listdir(tmp_path) == []                 # refused before anything ran
