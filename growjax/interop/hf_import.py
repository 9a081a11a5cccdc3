"""`growjax import-hf`: a local Hugging Face LLaMA-family directory -> a growjax checkpoint.

Reads config.json + safetensors (one file or sharded with model.safetensors.index.json)
of a `LlamaForCausalLM` (Llama 1-3.x, TinyLlama), `MistralForCausalLM`,
`Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `Olmo2ForCausalLM`, or the mixtures of experts
`MixtralForCausalLM` and `Qwen3MoeForCausalLM` (`hf_layout.model_fields` sets the model
family), checks every key and tensor header first, then streams tensor
by tensor: each device's shard of each growjax parameter is read from the memory-mapped safetensors
(`jax.make_array_from_callback`) and the step is written leaf by leaf
(`checkpoint_pieces.PieceWriter`; one whole save when several processes import), so memory
holds about one parameter at a time, never the whole model (benchmarks/RESULTS.md:
1.1B). The result is an ordinary growjax checkpoint (step 0, fresh optimizer state,
empty data position, metadata with a model config derived from config.json) that
`growjax train` (config.train.init_from, see configs/hf.py) and `growjax grow` accept.
The tokenizer files and the source config.json travel along in `hf/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import checkpoint_pieces as ckpt_pieces
from growjax.data import tokenizer_record
from growjax.interop import params_io
from growjax.interop.hf_layout import (CONFIG, DERIVED, DTYPES, HF_DIR, INDEX, MAPPINGS,
                                       TOKENIZER_FILES, expert_axis, hf_names, layout,
                                       model_fields, per_expert,
                                       param_paths, read_json)
from growjax.interop.hf_records import (MARKER, abandon, already_done, destination,
                                        files_fingerprint, publish, staging)
from growjax.model import LAYERS, ModelConfig
from growjax.train import state as state_lib

# ----------------------------------------------------------------------- safetensors


class Tensors:
  """The safetensors of an HF directory by tensor name, opened lazily (numpy, memory
  mapped: a slice reads only its bytes)."""

  def __init__(self, directory: epath.Path):
    from safetensors import safe_open
    self.directory = directory
    index = directory / INDEX
    if index.exists():
      weight_map = read_json(index, "the index names each tensor's file").get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' — it must map each tensor to its file")
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in directory.glob("*.safetensors"))
      if not files:
        raise ValueError(f"{directory}: no *.safetensors file (and no {INDEX}) — convert "
                         f"the weights to safetensors (transformers: save_pretrained("
                         f"safe_serialization=True))")
      weight_map = None
    self.handles, self.where = {}, {}
    for name in files:
      path = directory / name
      if not path.exists():
        raise ValueError(f"{index}: names {name}, which is not in {directory} — copy the "
                         f"missing shard")
      try:
        handle = safe_open(os.fspath(path), framework="np")
      except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
      self.handles[name] = handle
      for key in handle.keys():
        if weight_map is None or weight_map.get(key) == name:
          self.where[key] = name

  def file_of(self, name: str) -> str:
    return os.fspath(self.directory / self.where[name])

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.handles[self.where[name]].get_slice(name).get_shape())

  def dtype(self, name: str) -> str:
    return self.handles[self.where[name]].get_slice(name).get_dtype()

  def read(self, name: str, index: tuple) -> np.ndarray:
    return self.handles[self.where[name]].get_slice(name)[index]


def check_tensors(tensors: Tensors, cfg: ModelConfig, hf_dir: str) -> None:
  """Every tensor growjax needs is there with its shape; nothing else is (a bias,
  an unknown tensor) — all from the headers, before anything is written."""
  expected = {}
  for path in param_paths(cfg):
    hf_shape = layout(path, cfg)[0]
    for name in hf_names(path, cfg):
      expected[name] = hf_shape
  for name, shape in expected.items():
    if name not in tensors.where:
      where = INDEX if (tensors.directory / INDEX).exists() else "the *.safetensors files"
      raise ValueError(f"{hf_dir}: tensor {name!r} is missing from {where} — the "
                       f"checkpoint is incomplete or not a LLaMA layout")
    got = tensors.shape(name)
    if got != shape:
      raise ValueError(f"{tensors.file_of(name)}: tensor {name!r} has shape {list(got)}, "
                       f"config.json implies {list(shape)} — the weights do not match "
                       f"config.json")
    if tensors.dtype(name) not in ("F32", "BF16", "F16", "F64"):
      raise ValueError(f"{tensors.file_of(name)}: tensor {name!r} has dtype "
                       f"{tensors.dtype(name)} — growjax imports float tensors only")
  tied_head = cfg.tie_embeddings and "lm_head.weight"
  extra = sorted(n for n in tensors.where
                 if n not in expected and n != tied_head and not DERIVED.match(n))
  if extra:
    raise ValueError(f"{tensors.file_of(extra[0])}: tensor {extra[0]!r} has no place in "
                     f"growjax's LLaMA ({len(extra)} such tensor(s); biases and other "
                     f"extras are not supported) — import a model without it")


def _read_block(tensors: Tensors, name: str, path: str, cfg: ModelConfig,
                index: tuple[slice, ...]) -> np.ndarray:
  """growjax-layout block `index` (slices over the growjax axes, layers excluded) of
  the HF tensor `name`, reading only the HF rows / columns it needs: per HF axis, the
  range of its outer merged axis; the inner merged axes are sliced after reading."""
  _, mid_shape, perm = layout(path, cfg)
  mid_index = [slice(None)] * len(mid_shape)
  for j, s in enumerate(index):
    mid_index[perm[j]] = s
  hf_index, shape, inner, k = [], [], [], 0
  for g in MAPPINGS[path].groups:
    sizes, slices = mid_shape[k:k + len(g)], mid_index[k:k + len(g)]
    start, stop, _ = slices[0].indices(sizes[0])
    rest = int(np.prod(sizes[1:]))
    hf_index.append(slice(start * rest, stop * rest))
    shape += [stop - start, *sizes[1:]]
    inner += [slice(None), *slices[1:]]
    k += len(g)
  block = tensors.read(name, tuple(hf_index)).reshape(shape)[tuple(inner)]
  return np.transpose(block, perm).astype(np.dtype(cfg.param_dtype))


# ---------------------------------------------------------------------------- import


def _tokenizer_vocab(hf_dir: epath.Path) -> tuple[int, str] | None:
  if (hf_dir / "tokenizer.json").exists():
    from tokenizers import Tokenizer
    try:
      tok = Tokenizer.from_file(os.fspath(hf_dir / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
      raise ValueError(f"{hf_dir / 'tokenizer.json'}: not a readable tokenizer "
                       f"({str(e)[:120]})") from None
    return tok.get_vocab_size(with_added_tokens=True), "tokenizer.json"
  if (hf_dir / "tokenizer.model").exists():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.fspath(hf_dir / "tokenizer.model"))
    return int(sp.get_piece_size()), "tokenizer.model"
  return None


def _check_vocab(hf_dir: epath.Path, vocab: int, allow_padding: bool) -> str | None:
  found = _tokenizer_vocab(hf_dir)
  if found is None:
    return None
  n, name = found
  if vocab < n:
    raise ValueError(f"{hf_dir / CONFIG}: vocab_size={vocab} is smaller than the "
                     f"tokenizer's {n} tokens ({name}) — token ids past the table would "
                     f"have no embedding; fix config.json or the tokenizer")
  if vocab > n and not allow_padding:
    raise ValueError(f"{hf_dir / CONFIG}: vocab_size={vocab} is larger than the "
                     f"tokenizer's {n} tokens ({name}) — pair the model with its own "
                     f"tokenizer, or pass --allow_vocab_padding if the extra rows are "
                     f"padding")
  return name


def _tokenizer_record(src: epath.Path, found: str | None, hf: dict) -> dict | None:
  """The record of the tokenizer the import copies into `hf/`: its ids, files, and
  config.json's max_position_embeddings as its max length; None when there is none
  or growjax cannot build it (the files still travel)."""
  if found is None:
    return None
  spec = f"{'hf' if found == 'tokenizer.json' else 'spm'}:{os.fspath(src / found)}"
  longest = hf.get("max_position_embeddings")
  try:
    record = tokenizer_record.describe(
        spec, model_max_length=int(longest) if isinstance(longest, int) else None)
  except ValueError:
    return None
  files = [found] + [n for n in TOKENIZER_FILES if n != found and (src / n).exists()]
  return dict(record, files=files, dir=HF_DIR)


def _step0_whole(out: epath.Path) -> None:
  try:
    ckpt_lib.resolve(os.fspath(out), 0, field="--to")
  except (ValueError, FileNotFoundError):
    raise ValueError(f"--to={out} holds the record of this same import ({MARKER}) but no "
                     f"complete step 0 — it was damaged after the import: delete {out} "
                     f"and rerun; nothing was written") from None


def import_config(model_fields_: dict, dtype: str, mesh: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """The run config stored with an imported checkpoint: growjax's base config with
  the HF model's fields (what `growjax grow` reads as the source's config)."""
  from growjax.config import base_config
  cfg = base_config("tiny")
  with cfg.unlocked():
    for k, v in dataclasses.asdict(ModelConfig(**model_fields_, dtype=dtype)).items():
      cfg.model[k] = v
    cfg.mesh = mesh
  return cfg


def import_hf(hf_dir: str, to: str, *, mesh_spec: str = "", dtype: str = "bfloat16",
              allow_vocab_padding: bool = False, log=print) -> dict:
  """`growjax import-hf`: an HF LLaMA directory -> a growjax checkpoints dir (step 0)."""
  t0 = time.perf_counter()
  src = epath.Path(ckpt_lib.absolute(hf_dir))
  if not src.is_dir():
    raise ValueError(f"--from={src} is not a directory — give a local Hugging Face model "
                     f"directory (config.json + *.safetensors)")
  if not (src / CONFIG).exists():
    raise ValueError(f"--from={src} has no {CONFIG} — give a Hugging Face model directory "
                     f"(the one save_pretrained wrote)")
  if dtype not in DTYPES:
    raise ValueError(f"--dtype={dtype!r} — choose one of {', '.join(DTYPES)}")
  record = {"what": "import", "source": str(src),
            "options": {"dtype": dtype, "mesh": mesh_spec,
                        "allow_vocab_padding": bool(allow_vocab_padding)},
            "source_files": files_fingerprint(src, recursive=False)}
  if already_done(to, record, MARKER, _step0_whole):
    out = ckpt_lib.absolute(to)
    if jax.process_index() == 0:
      log(f"already imported, nothing to do: {out} holds the import of {src}")
    return {"out": out, "nothing_to_do": True}
  hf = read_json(src / CONFIG, "fix or re-download config.json")
  fields = model_fields(hf, str(src / CONFIG))
  tokenizer = _check_vocab(src, fields["vocab_size"], allow_vocab_padding)
  out = destination(to, "--to", record, MARKER)
  cfg = import_config(fields, dtype, params_io.parse_mesh(mesh_spec))
  setup = state_lib.build(cfg)
  model_cfg = setup.model_cfg
  tensors = Tensors(src)
  check_tensors(tensors, model_cfg, str(src))

  tok_record = _tokenizer_record(src, tokenizer, hf)
  source_dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
  tmp = staging(out)
  try:
    meta = dict(state_lib.run_meta(setup), flops_seen=0.0,
                hf={"source": str(src), "config": hf, "tokenizer": tokenizer,
                    "torch_dtype": source_dtype})
    if tok_record:
      meta[tokenizer_record.META_KEY] = tok_record
    if jax.process_count() == 1:
      _write_in_pieces(os.fspath(tmp), setup, tensors, meta)
    else:   # orbax's partial save is single-process: one whole save (device memory)
      params = _stream_params(tensors, model_cfg, setup.state_shardings.params)
      state = state_lib.TrainState(step=np.zeros((), np.int32), params=params,
                                   opt_state=_zeros(setup.abstract_state.opt_state))
      writer = ckpt_lib.Checkpoints(os.fspath(tmp), use_async=False, keep=None)
      writer.save(0, state, {}, meta, force=True)
      writer.wait()
      writer.close()
      del state, params
    if jax.process_index() == 0:
      (tmp / HF_DIR).mkdir()
      copied = [n for n in TOKENIZER_FILES if (src / n).exists()]
      for name in copied:
        (src / name).copy(tmp / HF_DIR / name)
      (src / CONFIG).copy(tmp / HF_DIR / CONFIG)
      (tmp / MARKER).write_text(json.dumps(   # last: the finished import's record
          {"source": str(src), "architectures": hf.get("architectures"),
           "tokenizer_files": copied, "dtype": dtype,
           **{k: v for k, v in record.items() if k != "what"}}, indent=1))
    publish(tmp, out)
  except BaseException:
    abandon(tmp)
    raise
  report = {"out": str(out), "params": model_cfg.num_params(), "seconds":
            time.perf_counter() - t0, "tokenizer": tokenizer}
  if jax.process_index() == 0:
    log(f"imported {src} ({model_cfg.num_params() / 1e6:.1f}M params, "
        f"{model_cfg.num_layers}L x {model_cfg.embed_dim}, heads {model_cfg.num_heads}/"
        f"{model_cfg.num_kv_heads}, {'tied' if model_cfg.tie_embeddings else 'untied'} head) "
        f"-> {out}/0 in {report['seconds']:.1f}s; tokenizer: "
        f"{tokenizer or 'none found (give config.data.tokenizer yourself)'}; weights "
        f"{source_dtype} kept as {model_cfg.param_dtype}, compute dtype recorded "
        f"{model_cfg.dtype} (--dtype" + ("" if model_cfg.dtype == source_dtype else
                                          f"; --dtype={source_dtype} computes as the source")
        + ")")
  return report


def _param_array(tensors: Tensors, cfg: ModelConfig, path: str, sh) -> jax.Array:
  """One parameter made directly in its sharding: each device's shard is read from the
  memory-mapped safetensors, layer by layer (one layer's block in flight)."""
  names = hf_names(path, cfg)
  _, mid_shape, perm = layout(path, cfg)
  shape = tuple(mid_shape[p] for p in perm)
  if per_expert(path):
    x = expert_axis(path)
    shape = shape[:x] + (cfg.num_experts,) + shape[x:]
  scanned = path.startswith(LAYERS + "/")
  if scanned:
    shape = (cfg.num_layers,) + shape

  def layer_block(i, index):
    if not per_expert(path):
      return _read_block(tensors, names[i], path, cfg, index)
    x = expert_axis(path)   # one HF tensor per expert, stacked on the experts axis
    rest = index[:x] + index[x + 1:]
    return np.stack([_read_block(tensors, names[i * cfg.num_experts + j], path, cfg, rest)
                     for j in range(*index[x].indices(cfg.num_experts))], axis=x)

  def block(index):
    if not scanned:
      return _read_block(tensors, names[0], path, cfg, index)
    layers = range(*index[0].indices(cfg.num_layers))
    out = None
    for k, i in enumerate(layers):
      layer = layer_block(i, index[1:])
      if out is None:
        out = np.empty((len(layers),) + layer.shape, layer.dtype)
      out[k] = layer
    return out

  return jax.make_array_from_callback(shape, sh, block)


def _stream_params(tensors: Tensors, cfg: ModelConfig, shardings: Any) -> Any:
  """Every parameter (`_param_array`), as the params tree."""
  out: dict = {}
  for path in param_paths(cfg):
    node_sh, node = shardings, out
    *parents, leaf = path.split("/")
    for key in parents:
      node_sh, node = node_sh[key], node.setdefault(key, {})
    node[leaf] = _param_array(tensors, cfg, path, node_sh[leaf])
  return out


PIECE_BYTES = 1 << 29   # leaves gathered into one orbax partial save up to this size


def _write_in_pieces(directory: str, setup: state_lib.Setup, tensors: Tensors,
                     meta: dict) -> None:
  """Step 0 written leaf by leaf (`checkpoint_pieces.PieceWriter`): each parameter is read into
  its sharding, written and freed before the next, and the fresh optimizer state
  (optax's AdamW starts at all zeros) likewise, so host and device memory hold about one
  leaf at a time, not the model."""
  writer = ckpt_pieces.PieceWriter(directory)
  piece, size = [], 0
  for key_path, leaf in ckpt_pieces.state_leaves(setup.abstract_state):
    keys = [str(k) for k in ckpt_pieces.ocp_keys(key_path)]
    if leaf is None:
      value = None
    elif keys[0] == "params":
      value = _param_array(tensors, setup.model_cfg, "/".join(keys[1:]), leaf.sharding)
    else:
      value = jax.make_array_from_callback(
          leaf.shape, leaf.sharding, lambda index, leaf=leaf: np.zeros(
              [len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)], leaf.dtype))
    piece.append((key_path, value))
    size += 0 if leaf is None else int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if size >= PIECE_BYTES:
      writer.write(piece)
      piece, size = [], 0
  if piece:
    writer.write(piece)
  writer.finish(0, {}, meta)


def _zeros(abstract: Any) -> Any:
  """A fresh optimizer state (optax's AdamW starts at all zeros) as zero-strided numpy
  views: saved without holding a copy of the model's size."""
  return jax.tree.map(lambda a: np.broadcast_to(np.zeros((), a.dtype), a.shape), abstract)
