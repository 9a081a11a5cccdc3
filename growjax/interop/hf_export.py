"""`growjax export-hf`: a growjax checkpoint -> a Hugging Face LlamaForCausalLM directory.

Writes config.json, safetensors (sharded with an index above --max_shard_size) and the
tokenizer files an import brought along (followed back through growths), one tensor at
a time gathered to the host.
"""

from __future__ import annotations

import json
import os
import re
import time

import jax
import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import filemode
from growjax.interop import params_io
from growjax.interop.hf_layout import (CONFIG, DTYPES, HF_DIR, INDEX, SINGLE,
                                       TOKENIZER_FILES, hf_config, hf_pieces, hf_side_files,
                                       layout, param_paths)
from growjax.interop.hf_records import (EXPORT_MARKER, abandon, already_done, destination,
                                        files_fingerprint, publish, staging)
from growjax.model import ModelConfig

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
  """`growjax export-hf`: a growjax checkpoint -> an HF LlamaForCausalLM directory."""
  from safetensors.numpy import save_file
  t0 = time.perf_counter()
  limit = _shard_size(max_shard_size)
  directory, resolved = ckpt_lib.resolve(checkpoint, step, field="--from")
  root = epath.Path(directory)
  record = {"what": "export", "source": f"{directory}/{resolved}",
            "options": {"dtype": dtype, "max_shard_size": limit},
            "source_files": files_fingerprint(root / str(resolved)) + (
                [[f"{HF_DIR}/{f[0]}", *f[1:]] for f in files_fingerprint(root / HF_DIR)]
                if (root / HF_DIR).is_dir() else [])}
  if already_done(to, record, EXPORT_MARKER):
    out = ckpt_lib.absolute(to)
    if jax.process_index() == 0:
      log(f"already exported, nothing to do: {out} holds the export of "
          f"{directory}/{resolved}")
    return {"out": out, "nothing_to_do": True}
  out = destination(to, "--to", record, EXPORT_MARKER)
  loaded = params_io.load(checkpoint, step=resolved, mesh_spec=mesh_spec, field="--from")
  cfg = loaded.model_cfg
  side_dir, hf_meta = hf_side_files(loaded.directory, loaded.meta)
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
          hf_config(cfg, hf_meta.get("config"), dtype), indent=2))
      if side_dir is not None:
        for name in TOKENIZER_FILES:
          if (side_dir / name).exists():
            (side_dir / name).copy(tmp / name)
            copied.append(name)
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
