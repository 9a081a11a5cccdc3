"""The Hugging Face peer: transformers' `LlamaForCausalLM` train step in PyTorch, on the
exact shape of a growjax preset, to set beside growjax and MaxText in one call.

  python benchmarks/hf_peer.py --preset 1b --case 4:1:0 --case 8:1:1   # batch:compile:ckpt
  python benchmarks/hf_peer.py --preset 410m --case 8:1:0

What a user starting from Hugging Face would run: float32 weights, bf16 autocast, SDPA
attention (flash on an H100), fused AdamW (0.9, 0.95, wd 0.1), optionally
`torch.compile` and gradient checkpointing; synthetic tokens, sequence 2048. Tokens/s is
the median of timed steps after warm-up; MFU uses growjax's own FLOP count for the
preset (`ModelConfig.flops_per_token`, full attention) and its causal-halved twin, over the
989 TFLOP/s datasheet peak, so every row of the table is in one convention.

Shapes come from growjax's presets (growjax/config.py MODEL_PRESETS); the model is built
from a transformers `LlamaConfig` with the same sizes (untied head, RMSNorm eps 1e-5,
rotary theta 10000). Needs torch and transformers (the GPU machine has both); growjax
itself is imported only for the shape and the FLOP count, never for compute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

PEAK_FLOPS = 989e12


def shape_of(preset: str):
  from growjax.config import MODEL_PRESETS
  from growjax.model import ModelConfig
  return ModelConfig(**MODEL_PRESETS[preset])


def run(preset: str, batch: int, compile_: bool, ckpt: bool, seq: int, steps: int) -> dict:
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  m = shape_of(preset)
  cfg = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.embed_dim,
                    intermediate_size=m.mlp_dim, num_hidden_layers=m.num_layers,
                    num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                    head_dim=m.head_dim, max_position_embeddings=seq,
                    tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0)
  torch.manual_seed(0)
  model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa",
                                        torch_dtype=torch.float32).cuda()
  if ckpt:
    model.gradient_checkpointing_enable()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                          fused=True)
  fwd = torch.compile(model) if compile_ else model
  x = torch.randint(0, m.vocab_size, (batch, seq), device="cuda")

  def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = fwd(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  for _ in range(3):
    step()
  torch.cuda.synchronize()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
  dt = statistics.median(times)
  tps = batch * seq / dt
  full, causal = m.flops_per_token(seq), m.flops_per_token(seq, causal=True)
  res = dict(system="hf_transformers", preset=preset, batch=batch, seq=seq,
             compile=compile_, grad_ckpt=ckpt, step_s=dt, tokens_per_s=tps,
             mfu=tps * full / PEAK_FLOPS, mfu_causal=tps * causal / PEAK_FLOPS,
             peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
             device=torch.cuda.get_device_name(), torch=torch.__version__)
  del model, opt, fwd
  torch.cuda.empty_cache()
  torch.cuda.reset_peak_memory_stats()
  return res


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="1b", help="a growjax model preset (1b, 410m, ...)")
  p.add_argument("--case", action="append", help="batch:compile:grad_ckpt, e.g. 4:1:0")
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--steps", type=int, default=10)
  a = p.parse_args()
  for case in a.case or ["4:1:0"]:
    b, c, k = (int(v) for v in case.split(":"))
    try:
      r = run(a.preset, b, bool(c), bool(k), a.seq, a.steps)
      print(f"HF {a.preset} B={b} compile={bool(c)} ckpt={bool(k)}: {r['tokens_per_s']:,.0f} "
            f"tok/s, MFU {r['mfu']:.1%} full / {r['mfu_causal']:.1%} causal, "
            f"{r['peak_mem_gib']:.1f} GiB, {r['device']}", flush=True)
      print("RESULT " + json.dumps(r), flush=True)
    except Exception as e:  # an OOM at one batch must not hide the others
      print(f"HF {a.preset} B={b} compile={bool(c)} ckpt={bool(k)}: failed "
            f"{type(e).__name__}: {str(e)[:200]}", flush=True)
      import torch
      torch.cuda.empty_cache()


if __name__ == "__main__":
  main()
