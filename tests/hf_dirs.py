"""Tiny Hugging Face LLaMA directories written with numpy + safetensors, for the tests
that need an HF layout but not an independent reference (round trips, growth
recipes, bad inputs, sampling). The equivalence with transformers is tested on
tests/fixtures/hf/, which transformers itself wrote (tests/fixtures/make_hf_fixtures.py)."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file


def write_tokenizer(d: str, vocab: int) -> None:
  """A word-level tokenizer.json of `vocab` tokens (`<s>`=0, `</s>`=1, then t2, t3, ...)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = {"<s>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, vocab)}}
  tok = Tokenizer(models.WordLevel(words, unk_token="</s>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(os.path.join(d, "tokenizer.json"))
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)


def tensors(vocab=64, embed=32, mlp=64, layers=2, heads=4, kv_heads=2, head_dim=None,
            tie=False, seed=0) -> dict[str, np.ndarray]:
  h = head_dim or embed // heads
  r = np.random.default_rng(seed)

  def w(*shape):
    return (r.normal(size=shape) * 0.5 / shape[-1] ** 0.5).astype(np.float32)

  t = {"model.embed_tokens.weight": r.normal(size=(vocab, embed)).astype(np.float32),
       "model.norm.weight": (1 + 0.2 * r.normal(size=embed)).astype(np.float32)}
  for i in range(layers):
    p = f"model.layers.{i}."
    t[p + "input_layernorm.weight"] = (1 + 0.2 * r.normal(size=embed)).astype(np.float32)
    t[p + "post_attention_layernorm.weight"] = (1 + 0.2 * r.normal(size=embed)).astype(
        np.float32)
    t[p + "self_attn.q_proj.weight"] = w(heads * h, embed)
    t[p + "self_attn.k_proj.weight"] = w(kv_heads * h, embed)
    t[p + "self_attn.v_proj.weight"] = w(kv_heads * h, embed)
    t[p + "self_attn.o_proj.weight"] = w(embed, heads * h)
    t[p + "mlp.gate_proj.weight"] = w(mlp, embed)
    t[p + "mlp.up_proj.weight"] = w(mlp, embed)
    t[p + "mlp.down_proj.weight"] = w(embed, mlp)
  if not tie:
    t["lm_head.weight"] = w(vocab, embed)
  return t


def config(vocab=64, embed=32, mlp=64, layers=2, heads=4, kv_heads=2, head_dim=None,
           tie=False, **extra) -> dict:
  out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
         "hidden_size": embed, "intermediate_size": mlp, "num_hidden_layers": layers,
         "num_attention_heads": heads, "num_key_value_heads": kv_heads,
         "head_dim": head_dim or embed // heads, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
         "tie_word_embeddings": tie, "hidden_act": "silu", "max_position_embeddings": 128,
         "torch_dtype": "float32", "rope_scaling": None, "attention_bias": False,
         "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 1}
  out.update(extra)
  return out


def write(d: str, *, tokenizer_vocab: int | None = None, config_extra: dict | None = None,
          drop: str | None = None, reshape: str | None = None, shards: int = 1,
          **shape) -> dict[str, np.ndarray]:
  """An HF directory at `d`; `drop` removes a tensor, `reshape` gives one a wrong shape."""
  os.makedirs(d, exist_ok=True)
  t = tensors(**shape)
  cfg = config(**shape, **(config_extra or {}))
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  if drop:
    t.pop(drop)
  if reshape:
    t[reshape] = t[reshape][:-1]
  names = sorted(t)
  if shards == 1:
    save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for k in range(shards):
      part = names[k::shards]
      fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
      save_file({n: t[n] for n in part}, os.path.join(d, fname), metadata={"format": "pt"})
      weight_map.update({n: fname for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  write_tokenizer(d, tokenizer_vocab or cfg["vocab_size"])
  return t
