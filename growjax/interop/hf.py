"""Hugging Face LLaMA-family checkpoints in and out: `growjax import-hf` / `export-hf`.

Import reads a local directory (config.json + safetensors, one file or sharded
with model.safetensors.index.json) of a `LlamaForCausalLM` (Llama, TinyLlama) or a
`MistralForCausalLM` without a sliding window, checks every key and tensor
header first, then streams tensor by tensor: each device's shard of each growjax
parameter is read from the memory-mapped safetensors (`jax.make_array_from_callback`)
and the step is written leaf by leaf (`checkpoint.PieceWriter`; one whole save when
several processes import), so memory holds about one parameter at a time, never the
whole model (benchmarks/RESULTS.md: 1.1B). The result is an ordinary growjax
checkpoint (step 0, fresh optimizer state, empty data position, metadata with a
model config derived from config.json) that `growjax train` (config.train.init_from,
see configs/hf.py) and `growjax grow` accept. The tokenizer files and the source config.json travel along in `hf/`.

Export writes config.json, safetensors (sharded with an index above
--max_shard_size) and the tokenizer files, one tensor at a time gathered to the
host. Both write into a temporary directory renamed into place, so nothing
half-written is ever left at the destination.

Reruns: each writes a record (`growjax_import.json` / `growjax_export.json`) into the
staging directory before the rename, holding the source, the options and a fingerprint
of the source's files (relative path, size, mtime). A rerun whose destination holds that
same record says "already imported / exported, nothing to do" and writes nothing, as
`growjax grow` does; another source, other options or a changed source into a non-empty
--to is refused, naming what differs. An unfinished attempt never reaches --to: its
staging sibling `.NAME.partial` is this command's own and is cleared and redone.

Layouts: HF's `nn.Linear` weights are (out, in); growjax's are (in, out...) with
heads split ((embed, heads, head_dim) for q). Rotary embeddings: HF Llama rotates
the two halves of each head (`rotate_half`) and so does `growjax.model.rope`, so
q / k need no permutation (tests/test_hf.py checks the logits against
transformers'). Not here: biases (Qwen2), rope scaling, sliding windows, MoE.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax import distributed
from growjax import lease
from growjax.interop import params_io
from growjax.train import state as state_lib
from growjax.model import AXIS_FIELDS, LAYERS, ModelConfig

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")
HF_DIR = "hf"                         # inside an imported checkpoints dir: the files above
MARKER = "growjax_import.json"        # what an import writes into --to
EXPORT_MARKER = "growjax_export.json"  # what an export writes into --to
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
DTYPES = {"float32": np.float32, "bfloat16": "bfloat16", "float16": np.float16}
# Tensors HF checkpoints may carry that growjax derives itself.
DERIVED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class Mapping:
  """One growjax parameter <-> HF tensor: `hf` (name, `{i}` the layer), `groups`
  (the HF tensor's axes, each a tuple of growjax axes merged into it, in order),
  so hf shape = products of the groups, and growjax shape = the groups' axes
  flattened then permuted to the growjax parameter's axis order."""
  hf: str
  groups: tuple[tuple[str, ...], ...]


_L = "model.layers.{i}."
MAPPINGS: dict[str, Mapping] = {
    "embedding": Mapping("model.embed_tokens.weight", (("vocab",), ("embed",))),
    "layers/attn_norm/scale": Mapping(_L + "input_layernorm.weight", (("embed",),)),
    "layers/attn/q": Mapping(_L + "self_attn.q_proj.weight", (("heads", "head_dim"), ("embed",))),
    "layers/attn/k": Mapping(_L + "self_attn.k_proj.weight",
                             (("kv_heads", "head_dim"), ("embed",))),
    "layers/attn/v": Mapping(_L + "self_attn.v_proj.weight",
                             (("kv_heads", "head_dim"), ("embed",))),
    "layers/attn/o": Mapping(_L + "self_attn.o_proj.weight", (("embed",), ("heads", "head_dim"))),
    "layers/mlp_norm/scale": Mapping(_L + "post_attention_layernorm.weight", (("embed",),)),
    "layers/mlp/gate": Mapping(_L + "mlp.gate_proj.weight", (("mlp",), ("embed",))),
    "layers/mlp/up": Mapping(_L + "mlp.up_proj.weight", (("mlp",), ("embed",))),
    "layers/mlp/down": Mapping(_L + "mlp.down_proj.weight", (("embed",), ("mlp",))),
    "final_norm/scale": Mapping("model.norm.weight", (("embed",),)),
    "lm_head": Mapping("lm_head.weight", (("vocab",), ("embed",))),
}


def _param_axes(path: str) -> tuple[str, ...]:
  from growjax.model import PARAMS
  return PARAMS[path].axes


def _layout(path: str, cfg: ModelConfig):
  """(hf shape, mid shape (groups flattened), perm: growjax axis j = mid axis perm[j])."""
  m = MAPPINGS[path]
  size = lambda a: getattr(cfg, AXIS_FIELDS[a])  # noqa: E731
  mid_axes = [a for g in m.groups for a in g]
  axes = [a for a in _param_axes(path) if a != LAYERS]
  hf_shape = tuple(int(np.prod([size(a) for a in g])) for g in m.groups)
  return hf_shape, tuple(size(a) for a in mid_axes), tuple(mid_axes.index(a) for a in axes)


def _paths(cfg: ModelConfig) -> list[str]:
  return [p for p in MAPPINGS if not (p == "lm_head" and cfg.tie_embeddings)]


def _hf_names(path: str, cfg: ModelConfig) -> list[str]:
  m = MAPPINGS[path]
  if path.startswith(LAYERS + "/"):
    return [m.hf.format(i=i) for i in range(cfg.num_layers)]
  return [m.hf]


# ------------------------------------------------------------------------ config.json


def _read_json(path: epath.Path, what: str) -> dict:
  try:
    out = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e}) — {what}") from None
  if not isinstance(out, dict):
    raise ValueError(f"{path}: not a JSON object — {what}")
  return out


def model_fields(hf: dict, where: str) -> dict:
  """growjax `config.model` fields from an HF config.json; refuses what the model
  cannot represent, naming the config key."""
  arch = hf.get("architectures") or []
  model_type = hf.get("model_type")
  known = [a for a in arch if a in ARCHITECTURES]
  if not known and model_type not in ARCHITECTURES.values():
    raise ValueError(f"{where}: architectures={arch} (model_type={model_type!r}) is not a "
                     f"LLaMA-family model — growjax imports {', '.join(ARCHITECTURES)} "
                     f"(model_type llama / mistral)")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if not isinstance(hf.get(key), int) or hf[key] <= 0:
      raise ValueError(f"{where}: {key}={hf.get(key)!r} — a LLaMA config.json gives it as "
                       f"a positive integer")

  def refuse(key, value, why):
    raise ValueError(f"{where}: {key}={value!r} {why} — growjax's LLaMA cannot represent "
                     f"it; import a model without it")

  if hf.get("hidden_act", "silu") != "silu":
    refuse("hidden_act", hf["hidden_act"], "is not SwiGLU's silu")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      refuse(key, hf[key], "asks for biases")
  rope = hf.get("rope_scaling")
  params = hf.get("rope_parameters") or {}   # transformers >= 5 keeps rope_theta here
  for key, value in (("rope_scaling", rope), ("rope_parameters", params or None)):
    if value is not None:
      kind = value.get("rope_type", value.get("type")) if isinstance(value, dict) else value
      if kind not in (None, "default"):
        refuse(key, value, f"is rope scaling of type {kind!r} (not implemented)")
  window = hf.get("sliding_window")
  if window is not None and hf.get("use_sliding_window", True) and \
      window < hf.get("max_position_embeddings", 0):
    refuse("sliding_window", window, "is a sliding attention window")
  for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size"):
    if hf.get(key):
      refuse(key, hf[key], "is a mixture of experts")
  if hf.get("quantization_config"):
    refuse("quantization_config", "...", "is a quantized checkpoint")
  heads = hf["num_attention_heads"]
  kv = hf.get("num_key_value_heads") or heads
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if hf.get("head_dim") is None and hf["hidden_size"] % heads:
    raise ValueError(f"{where}: hidden_size={hf['hidden_size']} is not a multiple of "
                     f"num_attention_heads={heads} and head_dim is not given — give head_dim")
  return dict(vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              embed_dim=hf["hidden_size"], num_heads=heads, num_kv_heads=kv,
              head_dim=head_dim, mlp_dim=hf["intermediate_size"],
              rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10_000.0))),
              norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def hf_config(model: ModelConfig, source: dict | None, dtype: str) -> dict:
  """An HF config.json for `model`: the imported source's keys kept (token ids,
  max positions), the shape keys set from `model`."""
  out = {k: v for k, v in (source or {}).items()
         if k not in ("rope_parameters", "transformers_version", "_name_or_path")}
  out.update({
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": model.vocab_size, "hidden_size": model.embed_dim,
      "intermediate_size": model.mlp_dim, "num_hidden_layers": model.num_layers,
      "num_attention_heads": model.num_heads, "num_key_value_heads": model.num_kv_heads,
      "head_dim": model.head_dim, "hidden_act": "silu", "rms_norm_eps": model.norm_eps,
      "rope_theta": model.rope_theta, "rope_scaling": None, "attention_bias": False,
      "mlp_bias": False, "tie_word_embeddings": model.tie_embeddings, "torch_dtype": dtype,
  })
  if (source or {}).get("rope_parameters"):   # transformers >= 5 spells rope this way
    out["rope_parameters"] = {"rope_theta": model.rope_theta, "rope_type": "default"}
    del out["rope_theta"], out["rope_scaling"]
  if "dtype" in (source or {}):
    out["dtype"] = dtype
  out.setdefault("max_position_embeddings", 2048)
  out.setdefault("initializer_range", 0.02)
  out.setdefault("use_cache", True)
  out.setdefault("pretraining_tp", 1)
  out.setdefault("attention_dropout", 0.0)
  out.pop("sliding_window", None)
  return out


# ----------------------------------------------------------------------- safetensors


class Tensors:
  """The safetensors of an HF directory by tensor name, opened lazily (numpy, memory
  mapped: a slice reads only its bytes)."""

  def __init__(self, directory: epath.Path):
    from safetensors import safe_open
    self.directory = directory
    index = directory / INDEX
    if index.exists():
      weight_map = _read_json(index, "the index names each tensor's file").get("weight_map")
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
  for path in _paths(cfg):
    hf_shape = _layout(path, cfg)[0]
    for name in _hf_names(path, cfg):
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
  _, mid_shape, perm = _layout(path, cfg)
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


def _to_hf(path: str, cfg: ModelConfig, value: np.ndarray) -> np.ndarray:
  """One layer's growjax tensor -> the HF tensor."""
  hf_shape, _, perm = _layout(path, cfg)
  return np.ascontiguousarray(np.transpose(value, np.argsort(perm)).reshape(hf_shape))


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


def _destination(to: str, flag: str, record: dict | None = None,
                 marker: str = MARKER) -> epath.Path:
  out = epath.Path(ckpt_lib.absolute(to))
  if out.exists() and (not out.is_dir() or
                       [p for p in out.iterdir() if not lease.is_lease_file(p.name)]):
    why = _differs(_read_record(out / marker), record) if record else None
    raise ValueError(f"{flag}={out} exists and is not empty{why or ''} — choose a new or "
                     f"empty directory; nothing was written")
  return out


def _files_fingerprint(root: epath.Path, recursive: bool = True) -> list[list]:
  """[relative path, bytes, mtime in ns] of every file under `root` (local or gs://):
  what says the source is the one a finished import / export read."""
  out = []

  def walk(d: epath.Path):
    for p in sorted(d.iterdir()):
      if recursive and p.is_dir():
        yield from walk(p)
      else:
        yield p

  for p in walk(root):
    if p.is_file() and not lease.is_lease_file(p.name):
      if ckpt_lib.is_url(os.fspath(p)):
        st = p.stat()
        size, mtime = int(st.length), int(float(st.mtime or 0) * 1e9)
      else:
        st = os.stat(os.fspath(p))
        size, mtime = st.st_size, st.st_mtime_ns
      out.append([os.fspath(p.relative_to(root)), size, mtime])
  return out


def _read_record(path: epath.Path) -> dict | None:
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def _differs(old: dict | None, new: dict) -> str | None:
  """Why a destination's record is not this command's: a clause for the refusal."""
  if old is None or "options" not in old:
    return None
  if old.get("source") != new["source"]:
    return f" (it holds the {new['what']} of {old.get('source')})"
  if old.get("options") != new["options"]:
    diff = [f"--{k}={old['options'].get(k)!r} there, {v!r} now"
            for k, v in new["options"].items() if old["options"].get(k) != v]
    return f" (it holds the {new['what']} of the same source with other options: " \
        f"{'; '.join(diff)})"
  return (f" (it holds the {new['what']} of the same source, whose files have changed "
          f"since)")


def _already_done(to: str, record: dict, marker: str, check=None) -> bool:
  """Whether --to holds a finished run of this same command: its record (written last,
  inside the staging dir renamed into place) equal to `record`, and `check(out)` (the
  output still whole) passing. Decided once, on process 0, for all processes."""
  out = epath.Path(ckpt_lib.absolute(to))
  old = _read_record(out / marker) if out.is_dir() else None
  same = old is not None and all(old.get(k) == v for k, v in record.items()
                                 if k != "what")
  if same and check is not None:
    check(out)
  return bool(distributed.agreed([int(same)])[0])


def _step0_whole(out: epath.Path) -> None:
  try:
    ckpt_lib.resolve(os.fspath(out), 0, field="--to")
  except (ValueError, FileNotFoundError):
    raise ValueError(f"--to={out} holds the record of this same import ({MARKER}) but no "
                     f"complete step 0 — it was damaged after the import: delete {out} "
                     f"and rerun; nothing was written") from None


def _staging(out: epath.Path) -> epath.Path:
  """A temporary sibling of `out`, renamed onto it once complete (a leftover from an
  earlier failed attempt is this command's own and is cleared)."""
  tmp = out.parent / f".{out.name}.partial"
  if jax.process_index() == 0:
    if tmp.exists():
      tmp.rmtree()
    tmp.mkdir(parents=True)
  distributed.agreed([0])
  return tmp


def _publish(tmp: epath.Path, out: epath.Path) -> None:
  distributed.agreed([0])
  if jax.process_index() == 0:
    with lease.carried(out, tmp):   # the command's lease on `out` moves with the rename
      if out.exists():
        out.rmdir()   # checked empty before anything was written
      tmp.rename(out)
  distributed.agreed([0])


def _abandon(tmp: epath.Path) -> None:
  if jax.process_index() == 0 and tmp.exists():
    tmp.rmtree()


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
            "source_files": _files_fingerprint(src, recursive=False)}
  if _already_done(to, record, MARKER, _step0_whole):
    out = ckpt_lib.absolute(to)
    if jax.process_index() == 0:
      log(f"already imported, nothing to do: {out} holds the import of {src}")
    return {"out": out, "nothing_to_do": True}
  hf = _read_json(src / CONFIG, "fix or re-download config.json")
  fields = model_fields(hf, str(src / CONFIG))
  tokenizer = _check_vocab(src, fields["vocab_size"], allow_vocab_padding)
  out = _destination(to, "--to", record, MARKER)
  cfg = import_config(fields, dtype, params_io.parse_mesh(mesh_spec))
  setup = state_lib.build(cfg)
  model_cfg = setup.model_cfg
  tensors = Tensors(src)
  check_tensors(tensors, model_cfg, str(src))

  tmp = _staging(out)
  try:
    meta = dict(state_lib.run_meta(setup), flops_seen=0.0,
                hf={"source": str(src), "config": hf, "tokenizer": tokenizer,
                    "torch_dtype": hf.get("torch_dtype") or hf.get("dtype") or "float32"})
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
    _publish(tmp, out)
  except BaseException:
    _abandon(tmp)
    raise
  report = {"out": str(out), "params": model_cfg.num_params(), "seconds":
            time.perf_counter() - t0, "tokenizer": tokenizer}
  if jax.process_index() == 0:
    log(f"imported {src} ({model_cfg.num_params() / 1e6:.1f}M params, "
        f"{model_cfg.num_layers}L x {model_cfg.embed_dim}, heads {model_cfg.num_heads}/"
        f"{model_cfg.num_kv_heads}, {'tied' if model_cfg.tie_embeddings else 'untied'} head) "
        f"-> {out}/0 in {report['seconds']:.1f}s; tokenizer: "
        f"{tokenizer or 'none found (give config.data.tokenizer yourself)'}")
  return report


def _param_array(tensors: Tensors, cfg: ModelConfig, path: str, sh) -> jax.Array:
  """One parameter made directly in its sharding: each device's shard is read from the
  memory-mapped safetensors, layer by layer (one layer's block in flight)."""
  names = _hf_names(path, cfg)
  _, mid_shape, perm = _layout(path, cfg)
  shape = tuple(mid_shape[p] for p in perm)
  scanned = path.startswith(LAYERS + "/")
  if scanned:
    shape = (cfg.num_layers,) + shape

  def block(index):
    if not scanned:
      return _read_block(tensors, names[0], path, cfg, index)
    layers = range(*index[0].indices(cfg.num_layers))
    out = None
    for k, i in enumerate(layers):
      layer = _read_block(tensors, names[i], path, cfg, index[1:])
      if out is None:
        out = np.empty((len(layers),) + layer.shape, layer.dtype)
      out[k] = layer
    return out

  return jax.make_array_from_callback(shape, sh, block)


def _stream_params(tensors: Tensors, cfg: ModelConfig, shardings: Any) -> Any:
  """Every parameter (`_param_array`), as the params tree."""
  out: dict = {}
  for path in _paths(cfg):
    node_sh, node = shardings, out
    *parents, leaf = path.split("/")
    for key in parents:
      node_sh, node = node_sh[key], node.setdefault(key, {})
    node[leaf] = _param_array(tensors, cfg, path, node_sh[leaf])
  return out


PIECE_BYTES = 1 << 29   # leaves gathered into one orbax partial save up to this size


def _write_in_pieces(directory: str, setup: state_lib.Setup, tensors: Tensors,
                     meta: dict) -> None:
  """Step 0 written leaf by leaf (`checkpoint.PieceWriter`): each parameter is read into
  its sharding, written and freed before the next, and the fresh optimizer state
  (optax's AdamW starts at all zeros) likewise, so host and device memory hold about one
  leaf at a time, not the model."""
  writer = ckpt_lib.PieceWriter(directory)
  piece, size = [], 0
  for key_path, leaf in ckpt_lib.state_leaves(setup.abstract_state):
    keys = [str(k) for k in ckpt_lib.ocp_keys(key_path)]
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


# ---------------------------------------------------------------------------- export


def hf_side_files(directory: str, meta: dict, depth: int = 0) -> tuple[epath.Path | None, dict]:
  """The `hf/` dir and the `hf` metadata of an imported checkpoint, following a grown
  checkpoint's `grown_from` back to its import."""
  d = epath.Path(directory)
  if meta.get("hf") or (d / HF_DIR).is_dir():
    return ((d / HF_DIR) if (d / HF_DIR).is_dir() else None), meta.get("hf") or {}
  source = (meta.get("grown_from") or {}).get("checkpoint")
  if not source or depth > 16:
    return None, {}
  try:
    src_dir, src_step = ckpt_lib.resolve(source, field="grown_from")
    return hf_side_files(src_dir, ckpt_lib.read_meta(src_dir, src_step), depth + 1)
  except (ValueError, FileNotFoundError, OSError):
    return None, {}


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
            "source_files": _files_fingerprint(root / str(resolved)) + (
                [[f"{HF_DIR}/{f[0]}", *f[1:]] for f in _files_fingerprint(root / HF_DIR)]
                if (root / HF_DIR).is_dir() else [])}
  if _already_done(to, record, EXPORT_MARKER):
    out = ckpt_lib.absolute(to)
    if jax.process_index() == 0:
      log(f"already exported, nothing to do: {out} holds the export of "
          f"{directory}/{resolved}")
    return {"out": out, "nothing_to_do": True}
  out = _destination(to, "--to", record, EXPORT_MARKER)
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
    for path in _paths(cfg):
      leaf = loaded.params
      for key in path.split("/"):
        leaf = leaf[key]
      names = _hf_names(path, cfg)
      for i, name in enumerate(names):
        value = _host(leaf[i] if path.startswith(LAYERS + "/") else leaf)
        yield name, _to_hf(path, cfg, value).astype(np_dtype)

  tmp = _staging(out)
  try:
    shards, current, size, total = [], {}, 0, 0

    def flush():
      shards.append(list(current))
      if jax.process_index() == 0:   # the shard count is known at the end: renamed then
        save_file(current, os.fspath(tmp / f"part-{len(shards):05d}.safetensors"),
                  metadata={"format": "pt"})

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
    _publish(tmp, out)
  except BaseException:
    _abandon(tmp)
    raise
  if jax.process_index() == 0:
    log(f"exported {loaded.directory}/{loaded.step} ({cfg.num_params() / 1e6:.1f}M params, "
        f"{dtype}) -> {out}: {n} safetensors file(s), "
        f"{'tokenizer ' + ', '.join(copied) if copied else 'no tokenizer files found'} in "
        f"{time.perf_counter() - t0:.1f}s")
  return {"out": str(out), "files": n, "dtype": dtype}
