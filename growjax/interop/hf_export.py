"""`growjax export-hf`: a growjax checkpoint -> a Hugging Face directory of its family
(`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`,
`Olmo2ForCausalLM`, and for an MoE `MixtralForCausalLM` or `Qwen3MoeForCausalLM`:
`hf_layout.hf_architecture`).

Writes config.json, safetensors (sharded with an index above --max_shard_size) and the
checkpoint's tokenizer files (its own, an import's, followed back through growths and
`init_from`; a tokenizer_config.json made for a bare tokenizer.json), the special ids
and max positions, one tensor at a time gathered to the host. `--verify` is
`hf_verify`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import jax
import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import filemode
from growjax.data import tokenizer_record
from growjax.interop import params_io
from growjax.interop.sample import checkpoint_tokenizer_record
from growjax.interop.hf_layout import (CONFIG, DTYPES, HF_DIR, INDEX, SINGLE,
                                       TOKENIZER_FILES, hf_config, hf_pieces, hf_side_files,
                                       layout, param_paths)
from growjax.interop.hf_records import (EXPORT_MARKER, abandon, already_done, destination,
                                        files_fingerprint, publish, staging)
from growjax.model import ModelConfig, mup


def _tokenizer_config(spec: str, record: dict, max_positions: int | None) -> dict:
  """A tokenizer_config.json for a bare tokenizer.json, so `AutoTokenizer` loads the
  export with its special tokens and max length."""
  from growjax.data import make_tokenizer
  tok = make_tokenizer(spec)._tok   # the `tokenizers.Tokenizer`
  out = {"tokenizer_class": "PreTrainedTokenizerFast",
         "model_max_length": int(max_positions or record.get("model_max_length") or 2048)}
  for key in ("bos", "eos", "pad"):
    i = record.get(f"{key}_id")
    if isinstance(i, int) and i >= 0 and tok.id_to_token(i) is not None:
      out[f"{key}_token"] = tok.id_to_token(i)
  return out


def _to_hf(path: str, cfg: ModelConfig, value: np.ndarray) -> np.ndarray:
  """One layer's growjax tensor -> the HF tensor."""
  hf_shape, _, perm = layout(path, cfg)
  return np.ascontiguousarray(np.transpose(value, np.argsort(perm)).reshape(hf_shape))


def _shard_size(text: str) -> int:
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
  if not m:
    raise ValueError(f"--max_shard_size={text!r} is not a size — e.g. 5GB, 500MB")
  unit = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, None: 1}[m.group(2)]
  return int(float(m.group(1)) * unit)


def _host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def export_hf(checkpoint: str, to: str, *, step: int | None = None, dtype: str = "auto",
              max_shard_size: str = "5GB", mesh_spec: str = "", log=print) -> dict:
  """`growjax export-hf`: a growjax checkpoint -> an HF directory of its family."""
  from safetensors.numpy import save_file
  t0 = time.perf_counter()
  limit = _shard_size(max_shard_size)
  directory, resolved = ckpt_lib.resolve(checkpoint, step, field="--from")
  root = epath.Path(directory)
  record = {"what": "export", "source": f"{directory}/{resolved}",
            "options": {"dtype": dtype, "max_shard_size": limit},
            "source_files": files_fingerprint(root / str(resolved)) + (
                [[f"{HF_DIR}/{f[0]}", *f[1:]] for f in files_fingerprint(root / HF_DIR)]
                if (root / HF_DIR).is_dir() else []) + (
                [[f"{tokenizer_record.FOLDER}/{f[0]}", *f[1:]]
                 for f in files_fingerprint(root / tokenizer_record.FOLDER)]
                if (root / tokenizer_record.FOLDER).is_dir() else [])}
  if already_done(to, record, EXPORT_MARKER):
    out = ckpt_lib.absolute(to)
    if jax.process_index() == 0:
      log(f"already exported, nothing to do: {out} holds the export of "
          f"{directory}/{resolved}")
    return {"out": out, "nothing_to_do": True}
  out = destination(to, "--to", record, EXPORT_MARKER)
  loaded = params_io.load(checkpoint, step=resolved, mesh_spec=mesh_spec, field="--from")
  cfg = loaded.model_cfg
  if mup.is_mup(cfg):   # HF models have no μP multipliers: fold them into the weights
    loaded = dataclasses.replace(loaded, params=mup.fold_into_sp(loaded.params, cfg))
    cfg = cfg.replace(parametrization="sp")
    log("a μP model: its logit, residual-branch and query multipliers are folded into "
        "the exported weights (the same function as plain weights)")
  _, hf_meta = hf_side_files(loaded.directory, loaded.meta)
  tok_spec, tok_record = checkpoint_tokenizer_record(loaded.directory, loaded.meta)
  tok_dir, tok_files = tokenizer_record.source_files(tok_spec or "byte")
  tok_files = [n for n in TOKENIZER_FILES
               if tok_dir is not None and (epath.Path(tok_dir) / n).exists()]
  max_positions = (tok_record.get("model_max_length")
                   or loaded.meta.get("seq_len") or None)
  if dtype == "auto":
    dtype = hf_meta.get("torch_dtype") or "float32"
    dtype = dtype if dtype in DTYPES else "float32"
  if dtype not in DTYPES:
    raise ValueError(f"--dtype={dtype!r} — choose auto or one of {', '.join(DTYPES)}")
  np_dtype = np.dtype(DTYPES[dtype]) if dtype != "bfloat16" else np.dtype(
      __import__("ml_dtypes").bfloat16)

  def hf_tensors():   # (name, array) one at a time, in HF's order
    for path in param_paths(cfg):
      leaf = loaded.params
      for key in path.split("/"):
        leaf = leaf[key]
      for name, index in hf_pieces(path, cfg):
        yield name, _to_hf(path, cfg, _host(leaf[index])).astype(np_dtype)

  tmp = staging(out)
  try:
    shards, current, size, total = [], {}, 0, 0

    def flush():
      shards.append(list(current))
      if jax.process_index() == 0:   # the shard count is known at the end: renamed then
        part = tmp / f"part-{len(shards):05d}.safetensors"
        save_file(current, os.fspath(part), metadata={"format": "pt"})
        filemode.as_umask(part)   # safetensors writes 0600

    for name, value in hf_tensors():
      if current and size + value.nbytes > limit:
        flush()
        current, size = {}, 0
      current[name] = value
      size += value.nbytes
      total += value.nbytes
    flush()
    current = {}
    n = len(shards)
    copied = []
    if jax.process_index() == 0:
      if n == 1:
        (tmp / "part-00001.safetensors").rename(tmp / SINGLE)
      else:
        weight_map = {}
        for k, names in enumerate(shards, start=1):
          final = f"model-{k:05d}-of-{n:05d}.safetensors"
          (tmp / f"part-{k:05d}.safetensors").rename(tmp / final)
          weight_map.update({name: final for name in names})
        (tmp / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
      (tmp / CONFIG).write_text(json.dumps(
          hf_config(cfg, hf_meta.get("config"), dtype, tok_record, max_positions), indent=2))
      for name in tok_files:
        (epath.Path(tok_dir) / name).copy(tmp / name)
        copied.append(name)
      if tok_spec and tok_spec.startswith("hf:") and "tokenizer_config.json" not in copied:
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            _tokenizer_config(tok_spec, tok_record, max_positions), indent=2))
        copied.append("tokenizer_config.json")
      (tmp / EXPORT_MARKER).write_text(json.dumps(   # last: the finished export's record
          {k: v for k, v in record.items() if k != "what"}, indent=1))
    publish(tmp, out)
  except BaseException:
    abandon(tmp)
    raise
  if jax.process_index() == 0:
    log(f"exported {loaded.directory}/{loaded.step} ({cfg.num_params() / 1e6:.1f}M params, "
        f"{dtype}) -> {out}: {n} safetensors file(s), "
        f"{'tokenizer ' + ', '.join(copied) if copied else 'no tokenizer files found'} in "
        f"{time.perf_counter() - t0:.1f}s")
  return {"out": str(out), "files": n, "dtype": dtype}
