"""Decoding with a KV cache over the model's PARAMS tree: the prompt fills a cache in
one pass, then each new token is one step of `lax.fori_loop`, greedy or sampled
(temperature, top-k, top-p). The same math as `growjax.model.transformer` (its parameter
layout, and `growjax.model.attention`'s rotary helpers `rotary_tables`, `rope`), checked against recomputing the
whole sequence (tests/test_sample.py). Used by `growjax sample`, evaluation and the
end-of-run sample of `growjax train`."""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax.model import attention
from growjax.model import moe
from growjax.model import mup
from growjax.model import transformer as model_lib
from growjax.model import ModelConfig


def _rms(x, scale_E, eps, dt):
  x = x.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * scale_E.astype(jnp.float32)).astype(dt)


def _layer(cfg: ModelConfig, p: dict, x_BxTxE, rotary, cache_k, cache_v, start, valid_BxS):
  """One block over the T new positions written at cache slot `start`; returns x and
  the updated caches ((B, S, K, H) each)."""
  dt = cfg.compute_dtype
  post = cfg.norm_position == "post"   # OLMo-2: x + norm(sublayer(x))
  h = x_BxTxE.astype(dt) if post else _rms(x_BxTxE, p["attn_norm"]["scale"], cfg.norm_eps, dt)
  a = p["attn"]
  q = jnp.einsum("bte,enh->btnh", h, a["q"].astype(dt))
  k = jnp.einsum("bte,ekh->btkh", h, a["k"].astype(dt))
  v = jnp.einsum("bte,ekh->btkh", h, a["v"].astype(dt))
  if cfg.qkv_bias:
    q, k, v = (q + a["q_bias"].astype(dt), k + a["k_bias"].astype(dt),
               v + a["v_bias"].astype(dt))
  if cfg.qk_norm != "none":
    name, axes = ("norm", 1) if cfg.qk_norm == "head" else ("whole_norm", 2)
    q = model_lib.head_norm(q, a[f"q_{name}"]["scale"], axes, cfg.norm_eps, dt)
    k = model_lib.head_norm(k, a[f"k_{name}"]["scale"], axes, cfg.norm_eps, dt)
  if mup.query_multiplier(cfg) != 1.0:   # μP's attention scale (growjax.model.mup)
    q = q * jnp.asarray(mup.query_multiplier(cfg), q.dtype)
  q, k = attention.rope(q, rotary), attention.rope(k, rotary)
  cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), start, 1)
  cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), start, 1)
  b, t, n, hd = q.shape
  kv = cfg.num_kv_heads
  q_BxTxKxGxH = q.reshape(b, t, kv, n // kv, hd)
  s = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, cache_k.astype(dt),
                 preferred_element_type=jnp.float32) * (hd ** -0.5)
  slot_T = start + jnp.arange(t)
  causal_TxS = jnp.arange(cache_k.shape[1])[None, :] <= slot_T[:, None]
  if cfg.sliding_window:   # slots and positions differ by the row's padding only
    causal_TxS &= jnp.arange(cache_k.shape[1])[None, :] > slot_T[:, None] - cfg.sliding_window
  mask = causal_TxS[None, None, None] & valid_BxS[:, None, None, None, :]
  s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
  w = jax.nn.softmax(s, axis=-1).astype(dt)
  out = jnp.einsum("bkgts,bskh->btkgh", w, cache_v.astype(dt)).reshape(b, t, n, hd)
  branch = mup.branch_multiplier(cfg)   # depth-μP's residual-branch multiplier; 1 under SP
  out = jnp.einsum("btnh,nhe->bte", out, a["o"].astype(dt))
  if post:
    out = _rms(out, p["attn_norm"]["scale"], cfg.norm_eps, dt)
  x_BxTxE = x_BxTxE + out * branch if branch != 1.0 else x_BxTxE + out
  h = x_BxTxE.astype(dt) if post else _rms(x_BxTxE, p["mlp_norm"]["scale"], cfg.norm_eps, dt)
  if cfg.num_experts:
    out = moe.apply_moe(cfg, p["moe"], h)[0]
    if post:
      out = _rms(out, p["mlp_norm"]["scale"], cfg.norm_eps, dt)
    return x_BxTxE + out * branch if branch != 1.0 else x_BxTxE + out, cache_k, cache_v
  m = p["mlp"]
  h = jax.nn.silu(h @ m["gate"].astype(dt)) * (h @ m["up"].astype(dt))
  out = h @ m["down"].astype(dt)
  if post:
    out = _rms(out, p["mlp_norm"]["scale"], cfg.norm_eps, dt)
  return x_BxTxE + out * branch if branch != 1.0 else x_BxTxE + out, cache_k, cache_v


def forward(cfg: ModelConfig, params: Any, tokens_BxT, positions_BxT, cache, start,
            valid_BxS):
  """Logits (float32) of `tokens` written at cache slot `start`, and the new cache
  (`k`, `v`: (layers, B, S, K, H))."""
  dt = cfg.compute_dtype
  x = jnp.take(params["embedding"], tokens_BxT, axis=0).astype(dt)
  rotary = attention.rotary_tables(positions_BxT, cfg.head_dim, cfg.rope_theta,
                                   cfg.rope_spec())

  def body(x, layer):
    p, ck, cv = layer
    x, ck, cv = _layer(cfg, p, x, rotary, ck, cv, start, valid_BxS)
    return x, (ck, cv)

  x, (k, v) = jax.lax.scan(body, x, (params["layers"], cache["k"], cache["v"]))
  x = _rms(x, params["final_norm"]["scale"], cfg.norm_eps, dt)
  head = model_lib.head_kernel(params, cfg)
  logits = jnp.einsum("bte,ev->btv", x, head.astype(dt), preferred_element_type=jnp.float32)
  return logits, {"k": k, "v": v}


def pick(logits_BxV, rng, temperature: float, top_k: int, top_p: float):
  """The next token per row: argmax at temperature 0, else a sample from the
  temperature-scaled distribution cut to the top k and to top-p mass."""
  if temperature <= 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs   # mass of the tokens ranked above
    sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
    logits = jnp.full_like(logits, -jnp.inf).at[
        jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0):
  """(tokens (B, P) int32, pad lengths (B,)) with each prompt right-aligned."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), max(pad_id, 0), np.int32)
  pads = np.zeros(len(prompts), np.int32)
  for i, p in enumerate(prompts):
    pads[i] = width - len(p)
    tokens[i, pads[i]:] = p
  return tokens, pads


def make_generate(cfg: ModelConfig, max_new_tokens: int, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, use_cache: bool = True):
  """A jittable `(params, tokens_BxP, pads_B, rng) -> new tokens (B, max_new_tokens)`.
  `use_cache=False` recomputes the whole sequence for every token (the reference)."""

  def generate(params, tokens_BxP, pads_B, rng):
    b, p = tokens_BxP.shape
    total = p + max_new_tokens
    slots_S = jnp.arange(total)
    valid_BxS = slots_S[None, :] >= pads_B[:, None]
    positions_BxS = jnp.maximum(slots_S[None, :] - pads_B[:, None], 0)
    shape = (cfg.num_layers, b, total, cfg.num_kv_heads, cfg.head_dim)
    empty = {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}
    seq_BxS = jnp.zeros((b, total), jnp.int32).at[:, :p].set(tokens_BxP)

    if use_cache:
      logits, cache = forward(cfg, params, tokens_BxP, positions_BxS[:, :p], empty, 0,
                              valid_BxS)
      last = logits[:, -1]
    else:
      cache, last = None, None

    def step(i, carry):
      seq, cache, last, rng = carry
      rng, sub = jax.random.split(rng)
      if use_cache:
        nxt = pick(last, sub, temperature, top_k, top_p)
        slot = p + i
        logits, cache = forward(cfg, params, nxt[:, None],
                                jax.lax.dynamic_slice_in_dim(positions_BxS, slot, 1, 1),
                                cache, slot, valid_BxS)
        last = logits[:, 0]
      else:   # the whole sequence so far, every time (positions past it are masked out)
        logits, _ = forward(cfg, params, seq, positions_BxS, empty, 0,
                            valid_BxS & (slots_S[None, :] < p + i))
        nxt = pick(jax.lax.dynamic_index_in_dim(logits, p + i - 1, 1, keepdims=False),
                   sub, temperature, top_k, top_p)
      seq = jax.lax.dynamic_update_slice_in_dim(seq, nxt[:, None], p + i, 1)
      return seq, cache, last, rng

    seq, *_ = jax.lax.fori_loop(0, max_new_tokens, step, (seq_BxS, cache, last, rng))
    return seq[:, p:]

  return generate


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
  out = []
  for text in prompts:
    ids = [int(i) for i in tokenizer.encode(text)]
    bos = getattr(tokenizer, "bos_id", -1)
    if bos is not None and bos >= 0 and (not ids or ids[0] != bos):
      ids = [bos] + ids
    out.append(ids)
  return out


def check_settings(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
  if max_new_tokens <= 0:
    raise ValueError(f"--max_new_tokens={max_new_tokens} must be positive")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"--temperature={temperature}, --top_k={top_k}, --top_p={top_p}: give "
                     f"temperature >= 0 (0: greedy), top_k >= 0 (0: all), 0 < top_p <= 1")


def generate_text(model_cfg: ModelConfig, params: Any, tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int = 0, mesh=None) -> tuple[list[str], dict]:
  """Continuations of `prompts` (cut at the tokenizer's eos) and timings."""
  check_settings(max_new_tokens, temperature, top_k, top_p)
  ids = encode_prompts(tokenizer, prompts)
  bad = [i for p in ids for i in p if not 0 <= i < model_cfg.vocab_size]
  if bad:
    raise ValueError(f"the tokenizer gives id {bad[0]}, outside the model's vocab_size="
                     f"{model_cfg.vocab_size} — sample with the model's own tokenizer "
                     f"(--tokenizer)")
  tokens, pads = left_pad(ids, getattr(tokenizer, "pad_id", 0))
  cfg = model_cfg.for_inference()
  # Prompts go in as numpy (replicated on every process); the output comes back
  # replicated, so each process reads it whole.
  out_sharding = None if mesh is None else NamedSharding(mesh, P())
  fn = jax.jit(make_generate(cfg, max_new_tokens, temperature, top_k, top_p),
               out_shardings=out_sharding)
  args = (params, tokens, pads, jax.random.key(seed))
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  t1 = time.perf_counter()
  out = np.asarray(jax.block_until_ready(compiled(*args)).addressable_data(0))
  t2 = time.perf_counter()
  eos = getattr(tokenizer, "eos_id", -1)
  texts = []
  for row in out:
    row = list(row)
    if eos is not None and eos >= 0 and eos in row:
      row = row[:row.index(eos)]
    texts.append(tokenizer.decode(row))
  generated = out.size
  return texts, {"compile_s": t1 - t0, "decode_s": t2 - t1,
                 "tokens_per_s": generated / max(t2 - t1, 1e-9), "tokens": int(generated)}
