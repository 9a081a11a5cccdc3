"""`growjax sample`: text from a checkpoint — greedy, temperature, top-k, top-p — with
a KV cache, batched prompts, on the checkpoint's mesh; prints tokens/s.

Decoding is a pure function over the model's own parameter tree (`growjax.model.PARAMS`
layout) and its rotary helpers (`rotary_tables`, `rope`): the prompt fills a cache
of keys / values per layer in one pass (prefill), then each new token attends to
the cache. Prompts of different lengths are left-padded: each row's rotary
positions start at its first real token and padded keys are masked, so a row
decodes as it would alone. `tests/test_sample.py` checks the prefill logits equal
`growjax.model.Transformer`'s and cached greedy output equals greedy decoding by
full recomputation. It does not train, and does not batch requests arriving over
time (one batch of prompts per call).
"""

from __future__ import annotations

from typing import Sequence

import jax
from etils import epath

from growjax.model.decode import (  # noqa: F401 - decoding, handed on for the tools
    check_settings, encode_prompts, forward, generate_text, left_pad, make_generate, pick)


def make_tokenizer(spec: str):
  """`growjax.data.make_tokenizer` ('byte', 'spm:', 'hf:' tokenizer.json, 'tiktoken:')."""
  from growjax.data import make_tokenizer as data_tokenizer
  return data_tokenizer(spec)


def checkpoint_tokenizer(directory: str, meta: dict, fallback: str | None = None) -> str:
  """The checkpoint's own tokenizer spec (`checkpoint_tokenizer_record`); `fallback`
  (default: the run config's `data.tokenizer`, else 'byte') when it has none."""
  spec, _ = checkpoint_tokenizer_record(directory, meta)
  if spec:
    return spec
  if fallback is not None:
    return fallback
  return ((meta.get("config") or {}).get("data") or {}).get("tokenizer") or "byte"


def checkpoint_tokenizer_record(directory: str, meta: dict, depth: int = 0
                                ) -> tuple[str | None, dict]:
  """(a spec building the checkpoint's tokenizer, or None; its record, or {}): the
  files its metadata's record kept (`growjax.data.tokenizer_record`), else an
  imported model's `hf/` files, else those of the checkpoint it was grown or
  initialised from, followed back, else the file the record names."""
  import os
  from growjax import checkpoint as ckpt_lib
  from growjax.data import tokenizer_record
  from growjax.interop.hf_layout import HF_DIR
  record = meta.get(tokenizer_record.META_KEY) or {}
  spec = tokenizer_record.spec_in(record, directory)
  if spec:
    return spec, record
  side = epath.Path(directory) / HF_DIR
  for name, prefix in (("tokenizer.json", "hf:"), ("tokenizer.model", "spm:")):
    if (side / name).exists():
      return f"{prefix}{os.fspath(side / name)}", record
  source = ((meta.get("grown_from") or {}).get("checkpoint")
            or (((meta.get("config") or {}).get("train") or {}).get("init_from")))
  if source and depth < 16:
    try:
      src_dir, src_step = ckpt_lib.resolve(source, field="grown_from")
      spec, theirs = checkpoint_tokenizer_record(
          src_dir, ckpt_lib.read_meta(src_dir, src_step), depth + 1)
      if spec:
        return spec, record or theirs
    except (ValueError, FileNotFoundError, OSError):
      pass
  # Last, the file the record was made from, where it still is.
  return tokenizer_record.usable_spec(record, directory), record


def run(checkpoint: str, prompts: Sequence[str], *, tokenizer: str = "",
        max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
        top_p: float = 1.0, seed: int = 0, step: int | None = None, mesh_spec: str = "",
        log=print) -> list[str]:
  """`growjax sample`: prints each prompt's continuation and tokens/s."""
  from growjax.interop import params_io
  check_settings(max_new_tokens, temperature, top_k, top_p)
  loaded = params_io.load(checkpoint, step=step, mesh_spec=mesh_spec)
  spec = tokenizer or checkpoint_tokenizer(loaded.directory, loaded.meta)
  tok = make_tokenizer(spec)
  with jax.set_mesh(loaded.mesh):
    texts, t = generate_text(loaded.model_cfg, loaded.params, tok, prompts,
                             max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, mesh=loaded.mesh)
  if jax.process_index() == 0:
    for prompt, text in zip(prompts, texts):
      log(f"{prompt}{text}")
      log("---")
    how = "greedy" if temperature <= 0 else (
        f"temperature {temperature}, top_k {top_k or 'all'}, top_p {top_p}")
    log(f"{t['tokens']} tokens ({len(prompts)} prompt(s) x {max_new_tokens}, {how}) in "
        f"{t['decode_s']:.2f}s: {t['tokens_per_s']:.1f} tokens/s (compile "
        f"{t['compile_s']:.1f}s, tokenizer {spec})")
  return texts
