"""Does an `growjax export-hf` directory load in transformers and compute growjax's
logits? (needs torch + transformers; run on the GPU machine, not in CI.)

  growjax train --config configs/tiny.py --workdir /tmp/rt/tiny --config.train.steps=100 \
      --config.model.dtype=float32
  growjax export-hf --from /tmp/rt/tiny --to /tmp/rt/tiny_hf
  python benchmarks/hf_roundtrip_check.py --checkpoint /tmp/rt/tiny --export /tmp/rt/tiny_hf

Loads the export with `LlamaForCausalLM.from_pretrained` (float32, eager attention, on
CPU: the reference), computes logits for fixed random tokens, and compares them with
growjax's float32 logits of the checkpoint (JAX at 'highest' matmul precision, so no
TF32 on GPU). With a tokenizer.json in the export it also checks `AutoTokenizer`
tokenizes a sentence as growjax's tokenizer does. Prints one JSON line; exits 1 when
the relative difference is above --tol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def growjax_logits(checkpoint: str, tokens: np.ndarray) -> tuple[np.ndarray, dict]:
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  from growjax.interop import params_io
  from growjax.model import Transformer
  loaded = params_io.load(checkpoint)
  cfg = loaded.model_cfg.replace(dtype="float32", attention_impl="xla", remat_policy="none")
  fn = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
  with jax.set_mesh(loaded.mesh):
    out = np.asarray(fn(loaded.params, tokens))
  return out, loaded.meta


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", required=True, help="the growjax checkpoint exported")
  ap.add_argument("--export", required=True, help="the export-hf output directory")
  ap.add_argument("--tol", type=float, default=1e-4, help="max relative logit difference")
  ap.add_argument("--seq", type=int, default=64)
  args = ap.parse_args()

  import torch
  import transformers
  torch.backends.cuda.matmul.allow_tf32 = False
  model = transformers.LlamaForCausalLM.from_pretrained(
      args.export, torch_dtype=torch.float32, attn_implementation="eager").eval()
  vocab = model.config.vocab_size
  tokens = np.random.default_rng(0).integers(0, vocab, (2, args.seq)).astype(np.int32)
  with torch.no_grad():
    ref = model(torch.from_numpy(tokens).long()).logits.float().numpy()
  ours, meta = growjax_logits(args.checkpoint, tokens)
  rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
  report = {"export": args.export, "checkpoint": args.checkpoint,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "params": sum(p.numel() for p in model.parameters()),
            "logits_shape": list(ref.shape), "max_rel_diff": rel, "tol": args.tol,
            "greedy_agree": float((ours.argmax(-1) == ref.argmax(-1)).mean())}
  if os.path.exists(os.path.join(args.export, "tokenizer.json")):
    from growjax.interop import sample
    text = "To be, or not to be: that is the question."
    hf_ids = transformers.AutoTokenizer.from_pretrained(args.export)(
        text, add_special_tokens=False)["input_ids"]
    ours_tok = sample.make_tokenizer(f"hf:{os.path.join(args.export, 'tokenizer.json')}")
    report["tokenizer_agrees"] = [int(i) for i in ours_tok.encode(text)] == list(hf_ids)
  print(json.dumps(report))
  ok = rel <= args.tol and report.get("tokenizer_agrees", True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
