"""The replica's larger scale point: a 16L x 1024 model (~4x the parameters and FLOPs of
configs/repro/replica.py's 16L x 512) trained from scratch, and G_stack (a 4-layer model
stacked x4 into it) at exactly the same FLOPs, on a Python-source corpus in BPE tokens.
benchmarks/repro.py --part larger runs both and `growjax speedup` on them.

  export GROWJAX_PYCORPUS_DIR=/tmp/pyc/pycorpus    # see "Corpus" below
  growjax train --config configs/repro/larger.py:run=scratch --workdir runs/larger/scratch
  growjax train --config configs/repro/larger.py:run=stack --workdir runs/larger/stack
  growjax speedup --scratch runs/larger/scratch --grown runs/larger/stack

On one H100 (the corpus tarball carried to the machine, extracted there; the inline
preparation, ~62M tokens on 16 processes, runs once and both runs share it):

  mkdir -p /tmp/pyc && tar xJf .pycorpus/pycorpus.tar.xz -C /tmp/pyc
  export GROWJAX_PYCORPUS_DIR=/tmp/pyc/pycorpus GROWJAX_DATA_DIR=$PWD/runs/data
  python benchmarks/repro.py --workdir runs/repro --part larger

Each run is 1.02e17 FLOPs. Measured on one H100 80GB HBM3 (docs/RESULTS.md, with
`--config.train.eval_every=100`): 225k tokens/s on the 16-layer model (35.6% MFU), 6 min 16 s
for the scratch call and 6 min 57 s for the stack call, data preparation and compiles included.

Args (comma-separated key=value after the colon):
  run          (required) scratch or stack.
  steps        the scratch run's steps (default 1000); a stack run spends their FLOPs.
  small_steps  stack only: steps of the 4-layer model (default steps // 3, as the replica).
  seed         config.seed (default 0): initialisation and data order.

Model: LLaMA 16L x 1024, 16 heads x 64, SwiGLU 3072, vocab 8192: 234.9M parameters
(4.28x the replica's 54.9M), 1.56e9 training FLOPs per token (3.64x; the larger share of
the LM head at vocab 8192 against 384). 1000 steps of 64 x 1024 tokens = 65.5M tokens,
1.023e17 FLOPs (4.04x the replica's 2.53e16). Remat 'dots': without it the activations of
16 layers x 65,536 tokens at width 1024 come near 80 GB (benchmarks/RESULTS.md: 410m,
24L x 1024, OOMs without remat at 49k tokens per step and runs faster with 'dots').

stack: the 4L x 1024 base model (71.3M) trains `small_steps` (333: d = 21.8M tokens, a
third of the scratch run's, as the replica), is grown by G_stack (layer map [0,1,2,3]*4,
optimizer state reset, LR schedule continued), and the 16-layer model trains on until the
whole run has spent the scratch run's FLOPs (`equal_flops_steps`: 1241 steps, 81.3M
tokens in all).

Optimizer: the replica's (AdamW 0.9/0.95, wd 0.1, clip 1, warmup 10% of the steps, cosine
to a tenth of the peak) with peak 5e-4 rather than 1e-3: the replica's rate scaled by
1/width for the hidden matrices (muP's rule for Adam when the width doubles), which sits
between GPT-3's 6e-4 (125M) and 3e-4 (350M) and the paper's 3e-4 at 410M; the runs are
short (1000 steps), so the higher end of that range. Scratch and stack differ only by
the growth.

Corpus (`growjax.data.corpora.python_packages`, $GROWJAX_PYCORPUS_DIR): the .py files of
the permissively licensed packages installed beside growjax plus CPython 3.11.7's stdlib,
deduplicated, ~2% held out as whole packages; built by benchmarks/make_pycorpus.py
(MANIFEST: configs/repro/larger_corpus_manifest.tsv): 13,417 training files, 205.2 MB;
validation (stdlib email + asyncio, optax, joblib, treescope, pendulum) 395 files,
4.07 MB. In this tokenizer's tokens (3.39 bytes per token, BOS/EOS per file counted):
**60.4M training tokens, 1.16M validation tokens** (TOKENS). Passes over the training
data: scratch 65.5M / 60.4M = 1.08; stack 21.8M + 59.5M = 81.3M tokens, 1.35 passes.

Tokenizer: byte-level BPE, vocab 8192, trained offline on the training split only:

  growjax tokenizer --kind hf_bpe --vocab_size 8192 \\
      --input "$GROWJAX_PYCORPUS_DIR/train/**/*.py" --model_prefix configs/repro/larger_tokenizer

8192 because the model is small: at 1024 wide the embedding and head are 16.8M (7% of the
parameters); 32k would make them 27% and cost 0.3e9 more FLOPs per token for a few % fewer
tokens on code, whose vocabulary (identifiers, keywords, indentation runs) is narrow.
"""

import importlib.util
import os

from ml_collections import config_dict

from growjax.config import model_config, parse_arg
from growjax.data import corpora
from growjax.growth.budget import equal_flops_steps
from growjax.model import ModelConfig

# The replica's recipe (loaded by path, as sweep.py loads operators.py: config files are
# not a package).
_SPEC = importlib.util.spec_from_file_location(
    "configs_repro_replica", os.path.join(os.path.dirname(__file__), "replica.py"))
replica = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(replica)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "larger_tokenizer", "tokenizer.json")
LARGE = dict(vocab_size=8192, num_layers=16, embed_dim=1024, num_heads=16, num_kv_heads=16,
             head_dim=64, mlp_dim=3072, remat_policy="dots")
SMALL = dict(LARGE, num_layers=LARGE["num_layers"] // 4)
# Measured with the tokenizer above on the pycorpus (see the module docstring).
TOKENS = dict(train=60_443_753, validation=1_162_053)


def get_config(arg=None):
  args = parse_arg(arg, "configs/repro/larger.py", run="", steps=1000,
                   small_steps=config_dict.placeholder(int), seed=0)
  if args.run not in ("scratch", "stack"):
    raise ValueError(f"configs/repro/larger.py: run={args.run!r} is not one of scratch, "
                     f"stack (e.g. configs/repro/larger.py:run=scratch)")
  if args.run == "scratch" and args.small_steps is not None:
    raise ValueError("configs/repro/larger.py: small_steps is an arg of run=stack only")
  # The replica's recipe (batch 64 x 1024, eval every 50 steps on 16 x 64 windows, log
  # cadence, AdamW settings, seed), then what makes this point larger.
  c = replica.get_config(f"run=scratch,steps={args.steps},seed={args.seed}")
  c.model = model_config("tiny", **LARGE)
  corpora.python_packages(c.data)
  c.data.tokenizer = "hf:" + TOKENIZER
  # The inline preparation tokenizes ~200 MB: one process per core (the GPU machine has 16).
  c.data.prepare_workers = max(1, min(16, os.cpu_count() or 1))
  c.train.checkpoint_every = 250
  c.optimizer.peak_lr = 5e-4
  c.optimizer.end_lr = 5e-5
  c.optimizer.warmup_steps = max(1, args.steps // 10)
  if args.run == "scratch":
    return c
  c.growth.enabled = True
  c.growth.small_model = model_config("tiny", **SMALL)
  c.growth.small_steps = args.steps // 3 if args.small_steps is None else args.small_steps
  c.growth.method = "stack"
  c.train.steps = equal_flops_steps(ModelConfig(**LARGE), ModelConfig(**SMALL),
                                    c.data.seq_len, args.steps, c.growth.small_steps)
  return c
