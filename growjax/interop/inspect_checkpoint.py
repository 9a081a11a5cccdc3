"""`growjax inspect CKPT_DIR`: what a checkpoint holds, so a user checks it before
growing or training from it.

Reads only metadata: orbax's tree metadata of the `state` item (shapes and dtypes,
no array is loaded), the `meta` and `data` JSON items, and the markers `growjax
grow` (`growjax_grow.json`) and `growjax import-hf` (`growjax_import.json`) leave.
With `--verify` it also checks every step's files against the sizes and xxh3 checksums
recorded when the save finished (`growjax.checkpoint.verify_step`, as a resume does).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from growjax import checkpoint as ckpt_lib
from growjax.model import ModelConfig

GROW_MARKER, IMPORT_MARKER = "growjax_grow.json", "growjax_import.json"


def _tree_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
  if isinstance(tree, dict):
    out = []
    for k, v in tree.items():
      out += _tree_leaves(v, f"{prefix}/{k}" if prefix else str(k))
    return out
  if isinstance(tree, (list, tuple)):
    out = []
    for i, v in enumerate(tree):
      out += _tree_leaves(v, f"{prefix}/{i}")
    return out
  return [(prefix, tree)]


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (ValueError, OSError):
    return None


def describe(checkpoint: str, step: int | None = None) -> dict:
  """A checkpoint's facts as plain JSON-able values (nothing but metadata is read)."""
  directory, step = ckpt_lib.resolve(checkpoint, step, field="CKPT_DIR")
  root = epath.Path(directory)
  step_dir = root / str(step)
  meta = ckpt_lib.read_meta(directory, step)
  with ocp.PyTreeCheckpointer() as reader:
    tree = reader.metadata(step_dir / "state")
  tree = getattr(tree, "item_metadata", tree)
  tree = getattr(tree, "tree", tree)
  tensors = [(name, tuple(int(d) for d in m.shape), str(m.dtype))
             for name, m in _tree_leaves(tree) if getattr(m, "shape", None) is not None]
  params = [t for t in tensors if t[0].startswith("params/")]
  opt = [t for t in tensors if t[0].startswith("opt_state/")]
  history = [t for t in tensors if t[0].startswith("fp8_history/")]
  model = meta.get("model")
  info = {
      "checkpoint": f"{directory}/{step}",
      "steps_on_disk": _steps(root),
      "step": step,
      "model": model,
      "params": int(sum(int(np.prod(s)) for _, s, _ in params)),
      "params_model": ModelConfig(**model).num_params() if model else None,
      "tensors": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in params],
      "optimizer_state": {"present": bool(opt), "tensors": len(opt),
                          "values": int(sum(int(np.prod(s)) for _, s, _ in opt))},
      # delayed FP8 scaling's amax histories (growjax.model.fp8): a training run's state
      "fp8_history": {"tensors": len(history), "length": int(meta.get(ckpt_lib.FP8_HISTORY_META, 0)),
                      "values": int(sum(int(np.prod(s)) for _, s, _ in history))},
      "data_position": _read_json(step_dir / "data" / "metadata") or None,
      "flops_seen": meta.get("flops_seen"),
      "global_batch_size": meta.get("global_batch_size"),
      "seq_len": meta.get("seq_len"),
      "grown_from": meta.get("grown_from"),
      "grow_marker": _read_json(root / GROW_MARKER),
      "imported_from": _read_json(root / IMPORT_MARKER),
  }
  return info


def _steps(root: epath.Path) -> list[int]:
  return ckpt_lib._complete_steps(root)  # noqa: SLF001 - the one definition of "complete"


def format_text(info: dict) -> str:
  m = info["model"] or {}
  lines = [f"checkpoint   {info['checkpoint']} (complete steps on disk: "
           f"{', '.join(map(str, info['steps_on_disk']))})",
           f"step         {info['step']}"]
  if m:
    lines.append(
        f"model        {m['num_layers']} layers x {m['embed_dim']} embed, heads "
        f"{m['num_heads']}/{m['num_kv_heads']} kv (head_dim {m['head_dim']}), mlp "
        f"{m['mlp_dim']}, vocab {m['vocab_size']}, rope_theta {m.get('rope_theta')}, "
        f"norm_eps {m.get('norm_eps')}, {'tied' if m.get('tie_embeddings') else 'untied'} "
        f"head, dtype {m.get('dtype')} (params {m.get('param_dtype')})")
    family = model_family(m)
    if family:
      lines.append(f"family       {family}")
  lines.append(f"parameters   {info['params']:,} ({info['params'] / 1e6:.2f}M)")
  o = info["optimizer_state"]
  lines.append(f"optimizer    {'present' if o['present'] else 'absent'}"
               + (f": {o['tensors']} tensors, {o['values']:,} values" if o["present"] else ""))
  h = info["fp8_history"]
  if h["tensors"]:
    lines.append(f"fp8 history  {h['tensors']} amax histories of {h['length']} steps "
                 f"(delayed FP8 scaling), {h['values']:,} values")
  lines.append(f"data         {json.dumps(info['data_position']) if info['data_position'] else 'start of the stream (no position saved)'}")
  flops = info["flops_seen"]
  lines.append(f"flops seen   {flops:.4g}" if flops is not None else "flops seen   unknown")
  if info["global_batch_size"]:
    lines.append(f"batch        {info['global_batch_size']} x {info['seq_len']} tokens")
  g = info["grown_from"]
  if g:
    src = g.get("model") or {}
    lines.append(f"grown from   {g.get('checkpoint')} ({src.get('num_layers')}L x "
                 f"{src.get('embed_dim')}) by {g.get('method')}"
                 + (f" + width {g['width_method']}" if g.get("width_method") else "")
                 + (f", layer map {g['layer_map']}" if g.get("layer_map") else "")
                 + f", opt_state {g.get('opt_state')}, schedule {g.get('schedule')}")
  else:
    lines.append("grown from   - (not grown)")
  if info["imported_from"]:
    i = info["imported_from"]
    lines.append(f"imported     from {i.get('source')} ({', '.join(i.get('architectures') or [])}"
                 f"); tokenizer files: {', '.join(i.get('tokenizer_files') or []) or 'none'}")
  lines.append("tensors")
  for t in info["tensors"]:
    lines.append(f"  {t['name']:<32} {str(tuple(t['shape'])):<22} {t['dtype']}")
  return "\n".join(lines)


def verify(checkpoint: str, step: int | None = None) -> dict[int, str | None]:
  """Every complete step (or `step`) of a checkpoint checked as a resume checks it
  (`checkpoint.verify_step`: the step it was written as, each file's size and xxh3):
  {step: None if intact, else 'FILE: what is wrong'}."""
  directory, latest = ckpt_lib.resolve(checkpoint, step, field="CKPT_DIR")
  steps = [latest] if step is not None else ckpt_lib.Checkpoints(
      directory, use_async=False).complete_steps()
  out = {}
  for s in steps:
    problem = ckpt_lib.verify_step(epath.Path(directory) / str(s))
    out[s] = None if problem is None else f"{problem[0]}: {problem[1]}"
  return out


def run(checkpoint: str, *, step: int | None = None, as_json: bool = False,
        check: bool = False) -> dict:
  """Prints what a checkpoint holds; with `check`, first verifies every step's files
  against their checksums and fails (one line) when one is damaged. A grow run's
  workdir is its last stage's checkpoints (the line on stderr says which)."""
  checkpoint = ckpt_lib.run_stage(checkpoint, "CKPT_DIR", ckpt_lib.to_stderr) or checkpoint
  checked = verify(checkpoint, step) if check else None
  info = describe(checkpoint, step)
  if checked is not None:
    info["verified"] = {str(s): problem or "intact" for s, problem in checked.items()}
  if as_json:
    print(json.dumps(info, indent=1))
  else:
    print(format_text(info))
    for s, problem in (checked or {}).items():
      print(f"verify step {s}: " + ("intact (sizes and xxh3 checksums match)"
                                    if problem is None else f"DAMAGED — {problem}"))
  damaged = [s for s, problem in (checked or {}).items() if problem is not None]
  if damaged:
    raise ValueError(f"{len(damaged)} damaged step(s) in {checkpoint}: "
                     f"{', '.join(map(str, damaged))} ({checked[damaged[-1]]}) — `growjax "
                     f"train` sets a damaged step aside and resumes the newest intact one; "
                     f"for grow/export pass --step of an intact one")
  return info


def model_family(m: dict) -> str:
  """The model family's fields in words ('' for plain LLaMA)."""
  parts = []
  if m.get("rope_scaling", "none") != "none":
    parts.append(f"rope {m['rope_scaling']} x{m.get('rope_factor')}")
  if m.get("qkv_bias"):
    parts.append("q/k/v biases")
  if m.get("qk_norm", "none") != "none":
    parts.append(f"q/k norm per {'head' if m['qk_norm'] == 'head' else 'projection'}")
  if m.get("norm_position", "pre") == "post":
    parts.append("norms after the sublayers")
  if m.get("sliding_window"):
    parts.append(f"sliding window {m['sliding_window']}")
  if m.get("num_experts"):
    shared = f", shared expert {m['shared_mlp_dim']}" if m.get("shared_mlp_dim") else ""
    parts.append(f"mixture of experts: {m['num_experts']} experts of "
                 f"{m.get('expert_mlp_dim')}, top-{m.get('experts_per_token')} "
                 f"({m.get('moe_router')}){shared}")
  if m.get("parametrization", "sp") == "mup":
    parts.append(f"μP, base {m.get('mup_base_embed_dim')} wide x "
                 f"{m.get('mup_base_num_layers')} layers, depth alpha "
                 f"{m.get('mup_depth_alpha')}")
  return ", ".join(parts)
