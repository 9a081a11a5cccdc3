"""A model imported with `growjax import-hf` (or grown from one): its model section
read from the checkpoint's metadata, so `growjax grow` and `growjax train
--config.train.init_from=...` accept it without writing the shapes out by hand.

  growjax import-hf --from ~/models/TinyLlama-1.1B --to runs/tinyllama
  growjax grow --from runs/tinyllama --to runs/tinyllama_x4 --method stack --g 4 \
      --config configs/hf.py:checkpoint=runs/tinyllama,layers=88
  growjax train --config configs/hf.py:checkpoint=runs/tinyllama_x4 \
      --config.train.init_from=runs/tinyllama_x4 --config.data.name=text_files ...

Recipes (tests/test_hf_families.py runs them on tiny models):

  # grow Qwen3-0.6B by depth: G_stack, 28 -> 56 layers
  growjax import-hf --from ~/models/Qwen3-0.6B --to runs/qwen3
  growjax grow --from runs/qwen3 --to runs/qwen3_x2 --method stack --g 2 \
      --config configs/hf.py:checkpoint=runs/qwen3,layers=56
  # block-expand Llama-3.2-1B: LLaMA Pro, 16 -> 20 layers, the function kept exactly
  growjax import-hf --from ~/models/Llama-3.2-1B --to runs/llama32
  growjax grow --from runs/llama32 --to runs/llama32_pro --method llama_pro \
      --config configs/hf.py:checkpoint=runs/llama32,layers=20

The model family (rope scaling, q/k/v biases, q/k norms, post norms, window) comes with
the model section, so the grown model is of its source's family.

Args (comma-separated key=value after the colon):
  checkpoint  the imported (or grown) checkpoint dir (required).
  layers      the model's depth (default: the checkpoint's): the target of a depth growth.
  seq         sequence length (default 2048).
  batch       global batch in sequences (default 8).
The tokenizer is the checkpoint's own (`hf:` its tokenizer.json when the import found
one, else `spm:` its tokenizer.model); the data source is the embedded corpus until
--config.data.* says otherwise: `growjax eval` with this config measures perplexity on it
(its first line says so; --config.data.prepared_dir=... for your corpus, --batches=-1 to
skip perplexity and score --tasks alone).
"""

from growjax import checkpoint as ckpt_lib
from growjax.config import base_config, parse_arg


def tokenizer_spec(directory: str, meta: dict) -> str:
  """The checkpoint's own tokenizer, following a grown checkpoint back to its import."""
  from growjax.interop.sample import checkpoint_tokenizer  # noqa: PLC0415
  return checkpoint_tokenizer(directory, meta, fallback="")


def get_config(arg=None):
  args = parse_arg(arg, "configs/hf.py", checkpoint="", layers=0, seq=2048, batch=8)
  if not args.checkpoint:
    raise ValueError("configs/hf.py needs checkpoint=DIR (an imported checkpoint), e.g. "
                     "configs/hf.py:checkpoint=runs/tinyllama")
  directory, step = ckpt_lib.resolve(args.checkpoint, field="configs/hf.py:checkpoint")
  meta = ckpt_lib.read_meta(directory, step)
  c = base_config("tiny")
  for key, value in meta["model"].items():
    if key in c.model:
      c.model[key] = value
  if args.layers:
    c.model.num_layers = args.layers
  spec = tokenizer_spec(directory, meta)
  if spec:
    c.data.tokenizer = spec
  c.data.seq_len = args.seq
  c.train.global_batch_size = args.batch
  c.train.steps = 1000
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optimizer.warmup_steps = 100
  return c
