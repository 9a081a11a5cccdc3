"""A model imported with `growjax import-hf` (or grown from one): its model section
read from the checkpoint's metadata, so `growjax grow` and `growjax train
--config.train.init_from=...` accept it without writing the shapes out by hand.

  growjax import-hf --from ~/models/TinyLlama-1.1B --to runs/tinyllama
  growjax grow --from runs/tinyllama --to runs/tinyllama_x4 --method stack --g 4 \
      --config configs/hf.py:checkpoint=runs/tinyllama,layers=88
  growjax train --config configs/hf.py:checkpoint=runs/tinyllama_x4 \
      --config.train.init_from=runs/tinyllama_x4 --config.data.name=text_files ...

Args (comma-separated key=value after the colon):
  checkpoint  the imported (or grown) checkpoint dir (required).
  layers      the model's depth (default: the checkpoint's): the target of a depth growth.
  seq         sequence length (default 2048).
  batch       global batch in sequences (default 8).
The tokenizer is the checkpoint's own (`hf:` its tokenizer.json when the import found
one, else `spm:` its tokenizer.model); the data source is the embedded corpus until
--config.data.* says otherwise.
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
