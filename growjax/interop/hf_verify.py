"""`growjax export-hf --verify`: the export loaded by transformers, checked against the
checkpoint it came from on a probe batch — the largest logit difference and the mean
KL divergence per token (as MaxText's logit checker reports them).

Needs torch and transformers, which growjax does not depend on: where either is not
importable the check says it was skipped and why, and nothing fails. Both models run in
float32 on the host CPU; the probe is fixed random token ids, so the numbers repeat.
"""

from __future__ import annotations

import numpy as np

PROBE_BATCH, PROBE_LEN = 2, 32


def verify(checkpoint: str, exported: str, *, step: int | None = None, log=print) -> dict:
  """{'skipped': why} without torch / transformers, else {'max_abs_diff', 'max_rel_diff',
  'mean_kl', 'tokens'} of transformers' logits on `exported` against growjax's on
  `checkpoint`."""
  try:
    import torch
    import transformers
  except ImportError as e:
    why = f"{e.name or 'torch/transformers'} is not importable (pip install torch transformers)"
    log(f"verify: skipped — {why}")
    return {"skipped": why}
  import jax

  from growjax.interop import params_io
  from growjax.model import Transformer
  loaded = params_io.load(checkpoint, step=step, field="--from")
  cfg = loaded.model_cfg.for_exact_logits()
  length = min(PROBE_LEN, int(loaded.meta.get("seq_len") or PROBE_LEN))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (PROBE_BATCH, length),
                                             dtype=np.int32)
  with jax.set_mesh(loaded.mesh):
    ours = np.asarray(jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(
        loaded.params, tokens), np.float64)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      exported, dtype=torch.float32, attn_implementation="eager").eval()
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens).long()).logits.double().numpy()
  diff = float(np.abs(ours - theirs).max())

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  p_log, q_log = log_softmax(ours), log_softmax(theirs)
  kl = float((np.exp(p_log) * (p_log - q_log)).sum(-1).mean())
  out = {"max_abs_diff": diff, "max_rel_diff": diff / float(np.abs(ours).max()),
         "mean_kl": kl, "tokens": int(tokens.size),
         "transformers": transformers.__version__, "torch": torch.__version__}
  log(f"verify: transformers {transformers.__version__} on {exported} vs growjax on "
      f"{loaded.directory}/{loaded.step}, {PROBE_BATCH}x{length} probe tokens, float32: "
      f"max |logit diff| {diff:.3g} ({out['max_rel_diff']:.3g} of the largest logit), "
      f"mean KL {kl:.3g} nats/token")
  return out
