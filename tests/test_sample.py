"""`growjax sample`: KV-cache decoding equals decoding by full recomputation with the
model itself (`growjax.model.Transformer`), for left-padded batches of prompts of
different lengths on a sharded mesh; the sampling filters; the command's output."""

import sys

import jax
import numpy as np
import pytest

import hf_dirs
from growjax import cli
from growjax.interop import params_io, sample
from growjax.model import Transformer


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A random GQA model (heads 4 / kv 2, untied), imported as a checkpoint and restored
  onto fsdp=4 x tensor=2."""
  d = tmp_path_factory.mktemp("sample")
  hf_dirs.write(str(d / "hf"), vocab=64, layers=2, heads=4, kv_heads=2)
  from growjax.interop import hf
  hf.import_hf(str(d / "hf"), str(d / "ck"), dtype="float32", log=lambda *_: None)
  loaded = params_io.load(str(d / "ck"), mesh_spec="fsdp=4,tensor=2")
  return loaded, str(d / "ck")


PROMPTS = [[0, 5, 7, 9, 11, 13], [0, 3], [0, 40, 50, 60, 10, 20, 30, 41, 42]]
NEW = 8


def _reference_greedy(loaded, prompts, new):
  """Greedy decoding by the model itself, one prompt at a time, the whole sequence
  recomputed for every token (a fixed-size buffer: causal, so later slots do not
  matter)."""
  cfg = loaded.model_cfg.replace(attention_impl="xla")
  f = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
  width = max(len(p) for p in prompts) + new
  out = []
  for prompt in prompts:
    buf = np.zeros((1, width), np.int32)
    buf[0, :len(prompt)] = prompt
    n = len(prompt)
    for _ in range(new):
      buf[0, n] = int(np.asarray(f(loaded.params, buf))[0, n - 1].argmax())
      n += 1
    out.append(buf[0, len(prompt):n].tolist())
  return out, f


def test_kv_cache_greedy_equals_greedy_without_cache(model):
  loaded, _ = model
  cfg = loaded.model_cfg.replace(attention_impl="xla")
  tokens, pads = sample.left_pad(PROMPTS)
  assert pads.tolist() == [3, 7, 0]
  with jax.set_mesh(loaded.mesh):
    cached = np.asarray(jax.jit(sample.make_generate(cfg, NEW))(
        loaded.params, tokens, pads, jax.random.key(0)))
    uncached = np.asarray(jax.jit(sample.make_generate(cfg, NEW, use_cache=False))(
        loaded.params, tokens, pads, jax.random.key(0)))
    reference, model_fn = _reference_greedy(loaded, PROMPTS, NEW)
  assert cached.tolist() == reference
  assert uncached.tolist() == reference
  # The prefill's logits are the model's (the last prompt: no padding).
  row = np.asarray(PROMPTS[2], np.int32)[None]
  empty = {k: np.zeros((cfg.num_layers, 1, row.shape[1], cfg.num_kv_heads, cfg.head_dim),
                       np.float32) for k in ("k", "v")}
  pos = np.arange(row.shape[1], dtype=np.int32)[None]
  ours, _ = jax.jit(lambda p: sample.forward(cfg, p, row, pos, empty, 0,
                                             np.ones_like(row, bool)))(loaded.params)
  theirs = np.asarray(jax.jit(lambda p: Transformer(cfg).apply({"params": p}, row))(
      loaded.params))
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)


def test_sampling_filters():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32))
  rng = jax.random.key(1)

  def counts(**kw):
    picked = np.asarray(sample.pick(logits, rng, **kw))
    return np.bincount(picked, minlength=4) / len(picked)

  assert counts(temperature=0.0, top_k=0, top_p=1.0).tolist() == [1, 0, 0, 0]
  assert counts(temperature=1.0, top_k=1, top_p=1.0).tolist() == [1, 0, 0, 0]
  assert counts(temperature=1.0, top_k=0, top_p=0.4).tolist() == [1, 0, 0, 0]
  top2 = counts(temperature=1.0, top_k=2, top_p=1.0)
  assert top2[2:].sum() == 0 and abs(top2[0] - 0.5 / 0.8) < 0.03
  top_p = counts(temperature=1.0, top_k=0, top_p=0.85)   # 0.5 + 0.3 < 0.85: keeps 3
  assert top_p[3] == 0 and abs(top_p[2] - 0.15 / 0.95) < 0.03
  full = counts(temperature=1.0, top_k=0, top_p=1.0)
  np.testing.assert_allclose(full, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  hot = counts(temperature=100.0, top_k=0, top_p=1.0)
  assert hot.min() > 0.2   # near uniform


def test_sample_command(model, monkeypatch, capsys):
  _, ck = model
  argv = ["growjax", "sample", f"--checkpoint={ck}", "--prompt=t5 t7", "--prompt=t3",
          "--max_new_tokens=6", "--mesh=fsdp=4,tensor=2"]
  monkeypatch.setattr(sys, "argv", argv)
  assert cli.main() == 0
  out = capsys.readouterr().out
  assert out.count("---") == 2 and out.startswith("t5 t7")
  assert "12 tokens (2 prompt(s) x 6, greedy)" in out and "tokens/s" in out
  assert f"tokenizer hf:{ck}/hf/tokenizer.json" in out
  # Sampling is reproducible by seed.
  runs = []
  for seed in (3, 3):
    monkeypatch.setattr(sys, "argv", argv + ["--temperature=1.5", "--top_k=20",
                                             "--top_p=0.95", f"--seed={seed}"])
    assert cli.main() == 0
    runs.append(capsys.readouterr().out.split("tokens (")[0])
  assert runs[0] == runs[1]
  monkeypatch.setattr(sys, "argv", argv + ["--top_p=0"])
  assert cli.main() == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax sample: ") and "top_p" in err and len(err.splitlines()) == 1
