"""Model families beyond plain LLaMA, in and out of Hugging Face and grown: Llama 3's
rope scaling, Qwen2's q/k/v biases (with linear rope scaling), Qwen3's per-head q/k
norm, OLMo-2's norms after the sublayers and whole-projection q/k norm, Mistral's
sliding window.

tests/fixtures/hf_families/ holds one tiny random model per family that transformers
itself saved, with the float32 logits it computed (make_hf_family_fixtures.py;
MANIFEST.json names the versions). No torch here: the import must equal transformers
within 1e-5 relative, export -> import must be bit-exact, and llama_pro, depth `zero`
and width `direct` growth must keep the logits."""

import functools
import json
import os
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from growjax import cli
from growjax.growth import grow
from growjax.interop import params_io
from growjax.model import Transformer, decode

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_families")
NAMES = sorted(n for n in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, n)))
FAMILY = {   # what each fixture must import as
    "llama3_rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_positions=64),
    "qwen2_linear": dict(qkv_bias=True, rope_scaling="linear", rope_factor=2.0),
    "qwen3": dict(qk_norm="head", head_dim=24),
    "olmo2": dict(qk_norm="whole", norm_position="post"),
    "mistral_window": dict(sliding_window=4),
}


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def hf_tensors(d):
  out = {}
  for name in sorted(os.listdir(d)):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(d, name)))
  return out


@functools.lru_cache(maxsize=None)
def _forward(cfg):   # one compilation per model shape
  cfg = cfg.replace(attention_impl="xla", dtype="float32")
  return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))


def logits(cfg, params, tokens):
  return np.asarray(_forward(cfg)(params, tokens))


def test_fixtures_cover_every_family():
  manifest = json.load(open(os.path.join(FIXTURES, "MANIFEST.json")))
  assert manifest["transformers"] and sorted(manifest["fixtures"]) == NAMES == sorted(FAMILY)
  assert {f["architecture"] for f in manifest["fixtures"].values()} == {
      "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Olmo2ForCausalLM",
      "MistralForCausalLM"}


@pytest.mark.parametrize("name", NAMES)
def test_family_imports_exactly_round_trips_and_grows_keeping_logits(name, tmp_path,
                                                                     monkeypatch, capsys):
  src = os.path.join(FIXTURES, name)
  ck, out, back = str(tmp_path / "ck"), str(tmp_path / "export"), str(tmp_path / "back")
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}",
                     "--dtype=float32")
  assert code == 0, err
  loaded = params_io.load(ck)
  cfg = loaded.model_cfg
  for key, value in FAMILY[name].items():
    assert getattr(cfg, key) == value, key
  tokens = np.load(os.path.join(src, "reference_tokens.npy"))
  ref = np.load(os.path.join(src, "reference_logits.npy"))
  got = logits(cfg, loaded.params, tokens)
  assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
  if cfg.sliding_window:   # packed-document attention (the trainer's) keeps the window
    c32 = cfg.replace(attention_impl="xla", dtype="float32")
    packed = jax.jit(lambda p, t, s, pos: Transformer(c32).apply(
        {"params": p}, t, segment_ids=s, positions=pos))(
            loaded.params, tokens, np.ones_like(tokens),
            np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape))
    np.testing.assert_allclose(np.asarray(packed), got, rtol=1e-5,
                               atol=1e-5 * np.abs(got).max())
  # Decoding's own forward (sample, eval's generation) computes the same family.
  b, t = tokens.shape
  empty = {k: np.zeros((cfg.num_layers, b, t, cfg.num_kv_heads, cfg.head_dim), np.float32)
           for k in ("k", "v")}
  prefill, _ = jax.jit(lambda p: decode.forward(
      cfg.replace(dtype="float32"), p, tokens, np.broadcast_to(np.arange(t), (b, t)),
      empty, 0, np.ones((b, t), bool)))(loaded.params)
  np.testing.assert_allclose(np.asarray(prefill), got, rtol=1e-5, atol=1e-5 * np.abs(got).max())

  # import -> export: every tensor of the original, bit for bit, under its family.
  code, _, err = run(monkeypatch, capsys, "export-hf", f"--from={ck}", f"--to={out}")
  assert code == 0, err
  original, exported = hf_tensors(src), hf_tensors(out)
  assert sorted(exported) == sorted(original)
  for k, v in original.items():
    assert np.array_equal(exported[k], v), k
  cfg_in = json.load(open(os.path.join(src, "config.json")))
  cfg_out = json.load(open(os.path.join(out, "config.json")))
  for key in ("architectures", "model_type", "rope_parameters", "sliding_window",
              "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings"):
    assert cfg_out.get(key) == cfg_in.get(key), key
  # export -> import: bit-exact params.
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={out}", f"--to={back}",
                     "--dtype=float32")
  assert code == 0, err
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               loaded.params, params_io.load(back).params)

  # Growth keeps the function: llama_pro (copies, new blocks with zero writers), depth
  # `zero` at an explicit map, and width `direct` (heads, kv heads and MLP doubled).
  key = jax.random.key(0)
  deep = cfg.replace(num_layers=4)
  for method, layer_map in (("llama_pro", None), ("zero", (0, -1, 1, -1))):
    grown = grow(loaded.params, cfg, deep, method, layer_map=layer_map, rng=key)
    np.testing.assert_allclose(logits(deep, grown, tokens), got, rtol=1e-5,
                               atol=1e-5 * np.abs(got).max())
  wide = cfg.replace(num_heads=2 * cfg.num_heads, num_kv_heads=2 * cfg.num_kv_heads,
                     mlp_dim=2 * cfg.mlp_dim)
  grown = grow(loaded.params, cfg, wide, "stack", width_method="direct", rng=key)
  np.testing.assert_allclose(logits(wide, grown, tokens), got, rtol=1e-5,
                             atol=1e-5 * np.abs(got).max())


HF_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "hf.py")


@pytest.mark.parametrize("name, how", [
    ("qwen3", ("--method=stack", "--g=2")),       # "grow Qwen3-0.6B by depth", shrunk
    ("llama3_rope", ("--method=llama_pro",)),     # "block-expand Llama-3.2-1B", shrunk
])
def test_configs_hf_recipes_and_export_verify(name, how, tmp_path, monkeypatch, capsys):
  src = os.path.join(FIXTURES, name)
  ck, grown, out = (str(tmp_path / d) for d in ("ck", "grown", "out"))
  assert run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}")[0] == 0
  code, _, err = run(monkeypatch, capsys, "grow", f"--from={ck}", f"--to={grown}",
                     f"--config={HF_CONFIG}:checkpoint={ck},layers=4", *how)
  assert code == 0, err
  code, text, err = run(monkeypatch, capsys, "inspect", grown)
  assert code == 0 and "Metadata file does not exist" not in text + err
  assert {"qwen3": "family       q/k norm per head\n",
          "llama3_rope": "family       rope llama3 x8.0\n"}[name] in text
  code, text, err = run(monkeypatch, capsys, "export-hf", f"--from={grown}", f"--to={out}",
                        "--verify")
  assert code == 0, err
  cfg_in = json.load(open(os.path.join(src, "config.json")))
  cfg_out = json.load(open(os.path.join(out, "config.json")))
  assert cfg_out["num_hidden_layers"] == 4
  for key in ("architectures", "rope_parameters", "head_dim", "tie_word_embeddings"):
    assert cfg_out.get(key) == cfg_in.get(key), key
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  [line] = [x for x in (text + err).splitlines() if x.startswith("verify: ")]
  try:   # torch + transformers are no CI dependency: the check says it was skipped
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    assert line.startswith("verify: skipped — ") and "is not importable" in line
    return
  diff = float(line.split("max |logit diff| ")[1].split()[0])
  assert diff < 1e-4 * float(np.abs(np.load(os.path.join(src, "reference_logits.npy"))).max())


def test_mup_folds_into_plain_weights_for_each_family():
  """Under μP the logit, branch and query multipliers fold into weights (for export):
  into q's bias too (Qwen2), into the q norm's scale where a q norm follows q (Qwen3,
  OLMo-2), into the post norms' scales where the norms follow the sublayers (OLMo-2)."""
  from growjax.model import ModelConfig, init_params, mup
  tokens = np.random.default_rng(0).integers(0, 32, (1, 8)).astype(np.int32)
  # (Qwen3's per-head q norm folds as OLMo-2's whole one does: the same branch.)
  for family in ({"qkv_bias": True}, {"qk_norm": "whole", "norm_position": "post"}):
    cfg = ModelConfig(vocab_size=32, num_layers=1, embed_dim=32, num_heads=2,
                      num_kv_heads=1, head_dim=16, mlp_dim=32, dtype="float32",
                      attention_impl="xla", parametrization="mup", mup_base_embed_dim=8,
                      mup_base_num_layers=2, mup_depth_alpha=1.0, mup_base_head_dim=4,
                      **family)
    params = jax.tree.map(   # biases and norm scales away from 0 and 1
        lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape),
        jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
    sp = cfg.replace(parametrization="sp")
    np.testing.assert_allclose(logits(sp, mup.fold_into_sp(params, cfg), tokens),
                               logits(cfg, params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag, expect", [
    ("--config.model.qk_norm=both", "config.model.qk_norm='both'; choose 'none', 'head'"),
    ("--config.model.rope_scaling=yarn", "config.model.rope_scaling='yarn'; choose one of"),
    ("--config.model.sliding_window=-4", "config.model.sliding_window=-4 must be 0 (none)"),
])
def test_bad_family_fields_are_one_line(flag, expect, tmp_path, monkeypatch, capsys):
  tiny = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")
  code, _, err = run(monkeypatch, capsys, "train", f"--config={tiny}", flag,
                     f"--workdir={tmp_path}")
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert err.startswith("growjax train: ") and expect in err, err


def test_width_zero_of_a_whole_qk_norm_is_refused_unless_inexact_is_allowed():
  """OLMo-2's q/k norm spans all heads: width `zero`'s new heads would move the old ones'
  attention, so it is refused (as a non-whole embed factor is); `direct` stays exact."""
  from growjax.growth import spec as spec_lib
  from growjax.model import ModelConfig
  small = ModelConfig(vocab_size=32, num_layers=1, embed_dim=32, num_heads=2,
                      num_kv_heads=1, head_dim=16, mlp_dim=32, qk_norm="whole",
                      norm_position="post")
  wide = small.replace(num_heads=4, num_kv_heads=2)
  with pytest.raises(ValueError, match=r"width zero from 2/1 to 4/2 heads does not keep the "
                                       r"function of a model with qk_norm='whole'"):
    spec_lib.resolve(small, wide, "stack", "zero")
  assert spec_lib.resolve(small, wide, "stack", "zero", allow_inexact=True).inexact
  assert not spec_lib.resolve(small, wide, "stack", "direct").inexact
  assert not spec_lib.resolve(small.replace(qk_norm="head", norm_position="pre"),
                              wide.replace(qk_norm="head", norm_position="pre"),
                              "stack", "zero").inexact
