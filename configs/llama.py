"""A LLaMA model of any preset (growjax.config.MODEL_PRESETS) trained from scratch,
sequence 2048, bf16, the paper's recipe (AdamW 0.9/0.95, wd 0.1, clip 1.0, 3e-4 cosine
to 3e-5, 3000 warmup steps).

  growjax train --config configs/llama.py:size=1b,batch=24 --workdir runs/1b

Args (comma-separated key=value after the colon):
  size   the model preset (required): 125m, 410m, 1b, 6l_2048 / 24l_2048 (the paper's
         base / target pair), 7b (Llama-2-7B shapes, the paper's 7B baseline and the
         target of `configs/grow.py:recipe=7b`), 8l_4096 (its 8-layer base), 128l_4096
         (the 7B stacked x4, 26.2B); `tiny` is configs/tiny.py.
  batch  the global batch in sequences (default: the size's, in SIZES below).

Set the data (e.g. --config.data.name=text_files and --config.data.tokenizer=spm:PATH)
and the batch for your cluster. Per-device memory of 1b, 7b and 128l_4096 at 8-256
devices is in benchmarks/RESULTS.md (`benchmarks/memory_plan.py`).
"""

from ml_collections import config_dict

from growjax.config import base_config, parse_arg

# size: (global batch, train steps, remat policy, checkpoint every)
SIZES = {
    "125m": (24, 100_000, "dots", 2000),
    "410m": (16, 100_000, "dots", 2000),
    "1b": (24, 100_000, "dots", 2000),
    "6l_2048": (8, 100_000, "dots", 2000),
    "24l_2048": (8, 100_000, "dots", 2000),
    "7b": (1024, 143_000, "dots", 1000),      # ~300B tokens at 1024 x 2048
    "8l_4096": (1024, 143_000, "dots", 1000),
    "128l_4096": (1024, 477_000, "full", 1000),  # ~1T tokens; "dots" needs ~96 GiB/device at 8
}


def get_config(arg=None):
  args = parse_arg(arg, "configs/llama.py", size="", batch=config_dict.placeholder(int))
  if args.size not in SIZES:
    raise ValueError(f"configs/llama.py: size={args.size!r} is not one of "
                     f"{', '.join(SIZES)} (e.g. configs/llama.py:size=1b; tiny: configs/tiny.py)")
  batch, steps, remat, checkpoint_every = SIZES[args.size]
  c = base_config(args.size)
  c.data.seq_len = 2048
  c.train.global_batch_size = batch if args.batch is None else args.batch
  c.train.steps = steps
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = checkpoint_every
  c.model.remat_policy = remat
  return c
