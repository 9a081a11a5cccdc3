"""The Hugging Face LLaMA layout, shared by import and export: which HF tensor each
growjax parameter is and how its axes are merged and ordered (`MAPPINGS`, `layout`),
config.json <-> growjax's model fields, and where an imported checkpoint keeps its HF
side files. One table for both directions, so import -> export is exact.

Layouts: HF's `nn.Linear` weights are (out, in); growjax's are (in, out...) with
heads split ((embed, heads, head_dim) for q). Rotary embeddings: HF Llama rotates
the two halves of each head (`rotate_half`) and so does `growjax.model.rope`, so
q / k need no permutation (tests/test_hf.py checks the logits against
transformers'). Model families follow from `ModelConfig` (`hf_architecture`): Qwen2's
q/k/v biases, Qwen3's per-head and OLMo-2's whole-projection q/k norms, OLMo-2's norms
after the sublayers (HF's post_* names), Llama 3's rope scaling, Mistral's window.
Mixtral (MixtralForCausalLM): the router and each expert's w1 / w3 / w2 are one HF
tensor per layer and expert (`{j}` in the name), the growjax parameter's `experts` axis
indexed by j; its routing (softmax, top-k, renormalised) is growjax's 'topk_softmax'.
Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's per-head q/k norms with the same per-expert
tensors under `mlp.gate` / `mlp.experts.{j}.gate_proj|up_proj|down_proj`
(`QWEN3_MOE_NAMES`; transformers 5 fuses them in memory but saves them so);
norm_topk_prob=true is 'topk_softmax', false 'softmax_topk', every layer sparse.
Not here: o_proj / MLP biases, rope types other than linear and llama3, Qwen2-MoE
(its shared expert has a sigmoid gate growjax's lacks), MoE on some layers only.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax.model import AXIS_FIELDS, LAYERS, ModelConfig
from growjax.model.params import EXPERTS, present

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")
HF_DIR = "hf"                         # inside an imported checkpoints dir: the files above
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "MixtralForCausalLM": "mixtral",
                 "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                 "Qwen3MoeForCausalLM": "qwen3_moe", "Olmo2ForCausalLM": "olmo2"}
ROPE_TYPES = ("default", "linear", "llama3")
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
    # Model families (present only where `growjax.model.present` says).
    "layers/attn/q_bias": Mapping(_L + "self_attn.q_proj.bias", (("heads", "head_dim"),)),
    "layers/attn/k_bias": Mapping(_L + "self_attn.k_proj.bias", (("kv_heads", "head_dim"),)),
    "layers/attn/v_bias": Mapping(_L + "self_attn.v_proj.bias", (("kv_heads", "head_dim"),)),
    "layers/attn/q_norm/scale": Mapping(_L + "self_attn.q_norm.weight", (("head_dim",),)),
    "layers/attn/k_norm/scale": Mapping(_L + "self_attn.k_norm.weight", (("head_dim",),)),
    "layers/attn/q_whole_norm/scale": Mapping(_L + "self_attn.q_norm.weight",
                                              (("heads", "head_dim"),)),
    "layers/attn/k_whole_norm/scale": Mapping(_L + "self_attn.k_norm.weight",
                                              (("kv_heads", "head_dim"),)),
}
# Mixtral's mixture of experts: one HF tensor per layer {i} and expert {j}.
_X = _L + "block_sparse_moe."
MAPPINGS.update({
    "layers/moe/router": Mapping(_X + "gate.weight", (("experts",), ("embed",))),
    "layers/moe/gate": Mapping(_X + "experts.{j}.w1.weight", (("expert_mlp",), ("embed",))),
    "layers/moe/up": Mapping(_X + "experts.{j}.w3.weight", (("expert_mlp",), ("embed",))),
    "layers/moe/down": Mapping(_X + "experts.{j}.w2.weight", (("embed",), ("expert_mlp",))),
})
# Qwen3-MoE's names for the same per-layer / per-expert tensors.
_Q = _L + "mlp."
QWEN3_MOE_NAMES = {"layers/moe/router": _Q + "gate.weight",
                   "layers/moe/gate": _Q + "experts.{j}.gate_proj.weight",
                   "layers/moe/up": _Q + "experts.{j}.up_proj.weight",
                   "layers/moe/down": _Q + "experts.{j}.down_proj.weight"}
# Norms after the sublayers (OLMo-2): the same growjax norms under HF's other names.
POST_NORM_NAMES = {"layers/attn_norm/scale": _L + "post_attention_layernorm.weight",
                   "layers/mlp_norm/scale": _L + "post_feedforward_layernorm.weight"}


def hf_template(path: str, cfg: ModelConfig) -> str:
  if cfg.norm_position == "post" and path in POST_NORM_NAMES:
    return POST_NORM_NAMES[path]
  if cfg.num_experts and cfg.qk_norm == "head" and path in QWEN3_MOE_NAMES:
    return QWEN3_MOE_NAMES[path]
  return MAPPINGS[path].hf


def param_axes(path: str) -> tuple[str, ...]:
  from growjax.model import PARAMS
  return PARAMS[path].axes


def layout(path: str, cfg: ModelConfig):
  """(hf shape, mid shape (groups flattened), perm: growjax axis j = mid axis perm[j])."""
  m = MAPPINGS[path]
  size = lambda a: getattr(cfg, AXIS_FIELDS[a])  # noqa: E731
  mid_axes = [a for g in m.groups for a in g]
  axes = [a for a in param_axes(path) if a != LAYERS and not (a == EXPERTS and per_expert(path))]
  hf_shape = tuple(int(np.prod([size(a) for a in g])) for g in m.groups)
  return hf_shape, tuple(size(a) for a in mid_axes), tuple(mid_axes.index(a) for a in axes)


def param_paths(cfg: ModelConfig) -> list[str]:
  return [p for p in MAPPINGS if present(p, cfg)]


def per_expert(path: str) -> bool:
  """Whether HF keeps one tensor per expert of this parameter (its name has `{j}`)."""
  return "{j}" in MAPPINGS[path].hf


def expert_axis(path: str) -> int:
  """The `experts` axis of one layer's growjax tensor (the layer axis removed)."""
  return [a for a in param_axes(path) if a != LAYERS].index(EXPERTS)


def hf_pieces(path: str, cfg: ModelConfig) -> list[tuple[str, tuple]]:
  """(HF tensor name, the index of its part in the growjax leaf) of every HF tensor of
  parameter `path`: the whole leaf, one layer `(i,)`, or one layer's expert."""
  hf = hf_template(path, cfg)
  if not path.startswith(LAYERS + "/"):
    return [(hf, ())]
  if not per_expert(path):
    return [(hf.format(i=i), (i,)) for i in range(cfg.num_layers)]
  before = (slice(None),) * expert_axis(path)
  return [(hf.format(i=i, j=j), (i, *before, j)) for i in range(cfg.num_layers)
          for j in range(cfg.num_experts)]


def hf_names(path: str, cfg: ModelConfig) -> list[str]:
  return [name for name, _ in hf_pieces(path, cfg)]


# ------------------------------------------------------------------------ config.json


def read_json(path: epath.Path, what: str) -> dict:
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
  if "Qwen2MoeForCausalLM" in arch or model_type == "qwen2_moe":
    raise ValueError(f"{where}: architectures={arch} (model_type={model_type!r}) is "
                     f"Qwen2-MoE, whose shared expert is scaled by a sigmoid gate "
                     f"(shared_expert_gate) that growjax's shared expert does not have — "
                     f"growjax imports the Mixtral and Qwen3-MoE mixtures of experts")
  if not known and model_type not in ARCHITECTURES.values():
    raise ValueError(f"{where}: architectures={arch} (model_type={model_type!r}) is not a "
                     f"LLaMA-family model — growjax imports {', '.join(ARCHITECTURES)} "
                     f"(model_type {' / '.join(ARCHITECTURES.values())})")
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads"):
    if not isinstance(hf.get(key), int) or hf[key] <= 0:
      raise ValueError(f"{where}: {key}={hf.get(key)!r} — a LLaMA config.json gives it as "
                       f"a positive integer")

  def refuse(key, value, why):
    raise ValueError(f"{where}: {key}={value!r} {why} — growjax's LLaMA cannot represent "
                     f"it; import a model without it")

  family = next((ARCHITECTURES[a] for a in arch if a in ARCHITECTURES), model_type)
  if hf.get("hidden_act", "silu") != "silu":
    refuse("hidden_act", hf["hidden_act"], "is not SwiGLU's silu")
  if hf.get("mlp_bias"):
    refuse("mlp_bias", hf["mlp_bias"], "asks for MLP biases")
  if hf.get("attention_bias"):
    refuse("attention_bias", hf["attention_bias"], "asks for biases (o_proj's too)")
  fields: dict = {"qkv_bias": family == "qwen2",
                  "qk_norm": {"qwen3": "head", "qwen3_moe": "head",
                              "olmo2": "whole"}.get(family, "none"),
                  "norm_position": "post" if family == "olmo2" else "pre"}
  rope = hf.get("rope_scaling")
  params = hf.get("rope_parameters") or {}   # transformers >= 5 keeps rope_theta here
  for key, value in (("rope_scaling", rope), ("rope_parameters", params or None)):
    if value is None:
      continue
    kind = value.get("rope_type", value.get("type")) if isinstance(value, dict) else value
    if kind not in (None, *ROPE_TYPES):
      refuse(key, value, f"is rope scaling of type {kind!r} (growjax has "
                         f"{', '.join(ROPE_TYPES)})")
    if kind in ("linear", "llama3"):
      fields.update(rope_scaling=kind, rope_factor=float(value["factor"]))
    if kind == "llama3":
      fields.update(rope_low_freq_factor=float(value["low_freq_factor"]),
                    rope_high_freq_factor=float(value["high_freq_factor"]),
                    rope_original_max_positions=int(
                        value["original_max_position_embeddings"]))
  window = hf.get("sliding_window")
  if family in ("qwen2", "qwen3", "qwen3_moe"):
    if hf.get("use_sliding_window") and window:
      refuse("use_sliding_window", True, "windows some layers only (max_window_layers)")
  elif family == "mistral":
    fields["sliding_window"] = int(window or 0)
  elif window is not None:
    refuse("sliding_window", window, "is a sliding attention window")
  mixtral = family == "mixtral"
  allowed = {"mixtral": ("num_local_experts",),
             "qwen3_moe": ("num_local_experts", "num_experts", "moe_intermediate_size")}
  for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
              "shared_expert_intermediate_size", "n_shared_experts"):
    if hf.get(key) and key not in allowed.get(family, ()):
      refuse(key, hf[key], "is a mixture of experts of a family growjax does not import "
             "(Mixtral's and Qwen3-MoE's it does)")
  if family == "qwen3_moe":
    if hf.get("mlp_only_layers"):
      refuse("mlp_only_layers", hf["mlp_only_layers"], "keeps dense MLPs in some layers "
             "(growjax's mixture of experts is in every layer)")
    if hf.get("decoder_sparse_step", 1) != 1:
      refuse("decoder_sparse_step", hf["decoder_sparse_step"], "makes only every n-th "
             "layer a mixture of experts (growjax's is in every layer)")
    experts = hf.get("num_experts", hf.get("num_local_experts"))
    for key, value in (("num_experts", experts),
                       ("moe_intermediate_size", hf.get("moe_intermediate_size"))):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: {key}={value!r} — a Qwen3-MoE config.json gives it "
                         f"as a positive integer (a dense Qwen3 is Qwen3ForCausalLM)")
  if hf.get("quantization_config"):
    refuse("quantization_config", "...", "is a quantized checkpoint")
  heads = hf["num_attention_heads"]
  kv = hf.get("num_key_value_heads") or heads
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if hf.get("head_dim") is None and hf["hidden_size"] % heads:
    raise ValueError(f"{where}: hidden_size={hf['hidden_size']} is not a multiple of "
                     f"num_attention_heads={heads} and head_dim is not given — give head_dim")
  moe = {}
  if mixtral:
    moe = dict(num_experts=int(hf.get("num_local_experts", 8)),
               experts_per_token=int(hf.get("num_experts_per_tok", 2)),
               expert_mlp_dim=hf["intermediate_size"], moe_router="topk_softmax")
  elif family == "qwen3_moe":   # transformers' Qwen3MoeConfig defaults norm_topk_prob off
    moe = {"num_experts": int(hf.get("num_experts", hf.get("num_local_experts"))),
           "experts_per_token": int(hf.get("num_experts_per_tok", 8)),
           "expert_mlp_dim": hf["moe_intermediate_size"],
           "moe_router": "topk_softmax" if hf.get("norm_topk_prob") else "softmax_topk"}
  return dict(**moe, vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              embed_dim=hf["hidden_size"], num_heads=heads, num_kv_heads=kv,
              head_dim=head_dim, mlp_dim=hf["intermediate_size"],
              rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10_000.0))),
              norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **fields)


def hf_config(model: ModelConfig, source: dict | None, dtype: str,
              tokenizer: dict | None = None, max_positions: int | None = None) -> dict:
  """An HF config.json for `model`: the imported source's keys kept (token ids,
  max positions), the shape keys set from `model`; without a source, the token ids of
  the checkpoint's `tokenizer` record and `max_positions`."""
  out = {k: v for k, v in (source or {}).items()
         if k not in ("rope_parameters", "transformers_version", "_name_or_path")}
  arch, model_type = hf_architecture(model)
  out.update({
      "architectures": [arch], "model_type": model_type,
      "vocab_size": model.vocab_size, "hidden_size": model.embed_dim,
      "intermediate_size": model.mlp_dim, "num_hidden_layers": model.num_layers,
      "num_attention_heads": model.num_heads, "num_key_value_heads": model.num_kv_heads,
      "head_dim": model.head_dim, "hidden_act": "silu", "rms_norm_eps": model.norm_eps,
      "rope_theta": model.rope_theta, "rope_scaling": None, "attention_bias": False,
      "mlp_bias": False, "tie_word_embeddings": model.tie_embeddings, "torch_dtype": dtype,
  })
  scaling = rope_scaling_dict(model)
  if scaling:
    out["rope_scaling"] = scaling
  if model_type == "mixtral":
    out.update({"intermediate_size": model.expert_mlp_dim,
                "num_local_experts": model.num_experts,
                "num_experts_per_tok": model.experts_per_token, "sliding_window": None})
  if model_type == "qwen3_moe":
    # `num_experts`, the published key: transformers 4 reads only it, 5 maps it to the
    # `num_local_experts` it saves (and 4 would ignore).
    out.pop("num_local_experts", None)
    out.update({"num_experts": model.num_experts, "moe_intermediate_size": model.expert_mlp_dim,
                "num_experts_per_tok": model.experts_per_token,
                "norm_topk_prob": model.moe_router == "topk_softmax",
                "decoder_sparse_step": 1, "mlp_only_layers": []})
  if model.num_experts:
    for key in ("mlp_bias", "pretraining_tp"):
      out.pop(key, None)
  if (source or {}).get("rope_parameters"):   # transformers >= 5 spells rope this way
    out["rope_parameters"] = {"rope_theta": model.rope_theta,
                              **(scaling or {"rope_type": "default"})}
    del out["rope_theta"], out["rope_scaling"]
  if "dtype" in (source or {}):
    out["dtype"] = dtype
  for key in ("bos", "eos", "pad"):
    value = (tokenizer or {}).get(f"{key}_id")
    if f"{key}_token_id" not in out and tokenizer:
      out[f"{key}_token_id"] = value if isinstance(value, int) and value >= 0 else None
  out.setdefault("max_position_embeddings", int(max_positions or 2048))
  out.setdefault("initializer_range", 0.02)
  out.setdefault("use_cache", True)
  if not model.num_experts:
    out.setdefault("pretraining_tp", 1)
    out.pop("sliding_window", None)
  out.setdefault("attention_dropout", 0.0)
  out.pop("sliding_window", None)
  if model_type == "mistral":
    out["sliding_window"] = model.sliding_window or None
  if model_type in ("qwen2", "qwen3", "qwen3_moe"):
    out.update(sliding_window=None, use_sliding_window=False)
  if "layer_types" in out:   # one per layer: a depth growth changes their number
    out["layer_types"] = ["full_attention"] * model.num_layers
  return out


def hf_architecture(model: ModelConfig) -> tuple[str, str]:
  """The HF class (and model_type) of a growjax model's family; one HF has no class for
  (say, q/k/v biases with a window) is refused, naming the fields."""
  family = (model.qkv_bias, model.qk_norm, model.norm_position, bool(model.sliding_window))
  if model.num_experts:
    moe = {(False, "none", "pre", False): ("MixtralForCausalLM", "mixtral"),
           (False, "head", "pre", False): ("Qwen3MoeForCausalLM", "qwen3_moe")}.get(family)
    if model.shared_mlp_dim or not moe or (moe[1] == "mixtral"
                                           and model.moe_router != "topk_softmax"):
      raise ValueError(f"config.model: num_experts={model.num_experts} with shared_mlp_dim="
                       f"{model.shared_mlp_dim}, moe_router={model.moe_router!r}, qkv_bias="
                       f"{model.qkv_bias}, qk_norm={model.qk_norm!r}, norm_position="
                       f"{model.norm_position!r}, sliding_window={model.sliding_window}: no "
                       f"Hugging Face MoE class has that — export Mixtral (no q/k norm, "
                       f"'topk_softmax') or Qwen3-MoE (qk_norm='head', either router), "
                       f"without a shared expert")
    return moe
  known = {(False, "none", "pre", False): ("LlamaForCausalLM", "llama"),
           (False, "none", "pre", True): ("MistralForCausalLM", "mistral"),
           (True, "none", "pre", False): ("Qwen2ForCausalLM", "qwen2"),
           (False, "head", "pre", False): ("Qwen3ForCausalLM", "qwen3"),
           (False, "whole", "post", False): ("Olmo2ForCausalLM", "olmo2")}
  if family not in known:
    raise ValueError(f"config.model has qkv_bias={model.qkv_bias}, qk_norm="
                     f"{model.qk_norm!r}, norm_position={model.norm_position!r}, "
                     f"sliding_window={model.sliding_window}: no Hugging Face class has "
                     f"that combination — export one of Llama, Mistral (window), Qwen2 "
                     f"(biases), Qwen3 (qk_norm='head'), OLMo-2 (qk_norm='whole', post)")
  return known[family]


def rope_scaling_dict(model: ModelConfig) -> dict | None:
  if model.rope_scaling == "none":
    return None
  out = {"rope_type": model.rope_scaling, "factor": model.rope_factor}
  if model.rope_scaling == "llama3":
    out.update(low_freq_factor=model.rope_low_freq_factor,
               high_freq_factor=model.rope_high_freq_factor,
               original_max_position_embeddings=model.rope_original_max_positions)
  return out


# ------------------------------------------------------------------ imported side files


def hf_side_files(directory: str, meta: dict, depth: int = 0) -> tuple[epath.Path | None, dict]:
  """The `hf/` dir and the `hf` metadata of an imported checkpoint, following a grown
  checkpoint's `grown_from` (a trained one's `train.init_from`) back to its import."""
  d = epath.Path(directory)
  if meta.get("hf") or (d / HF_DIR).is_dir():
    return ((d / HF_DIR) if (d / HF_DIR).is_dir() else None), meta.get("hf") or {}
  source = ((meta.get("grown_from") or {}).get("checkpoint")
            or ((meta.get("config") or {}).get("train") or {}).get("init_from"))
  if not source or depth > 16:
    return None, {}
  try:
    src_dir, src_step = ckpt_lib.resolve(source, field="grown_from")
    return hf_side_files(src_dir, ckpt_lib.read_meta(src_dir, src_step), depth + 1)
  except (ValueError, FileNotFoundError, OSError):
    return None, {}
