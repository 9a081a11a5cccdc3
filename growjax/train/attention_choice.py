"""Which cuDNN path keeps packed documents apart: `config.model.cudnn_packing='auto'`.

On a GPU, document-masked attention has two cuDNN paths (growjax.model), used by the
train step for batches that hold a document boundary or padding; a batch whose rows are
each one whole document takes plain causal attention instead (the single-document fast
path, `config.model.single_document_fast_path`, growjax.train), whichever is chosen here:
  ragged  cuDNN's packed layout (per-document lengths and offsets): attention skips the
          blocks between documents, so it is *faster* than no masking (1.1B on an H100:
          68,047 tok/s against 66,929 unmasked), but JAX keeps softmax statistics for
          `max_segments` documents per row: 11.6 GiB more at 1.1B, batch 24.
  mask    flash attention with a (B, 1, T, T) boolean mask: no extra memory, 8.5% slower
          (61,287 tok/s) — cuDNN's kernel with a bias is slower, not its memory traffic.
'auto' compiles the train step with the ragged path once, reads its per-device memory
from `compiled.memory_analysis()`, and keeps it if it fits the device's memory limit
(`memory_stats()['bytes_limit']`, which JAX's XLA_PYTHON_CLIENT_MEM_FRACTION sets);
otherwise it takes 'mask' and says what ragged would have needed. Off the GPU, or
with document masking off, there is nothing to choose.

The `growjax` command sets XLA_PYTHON_CLIENT_MEM_FRACTION=0.94 where the user has not
(growjax.cli; JAX's own default is 0.75), so that ragged fits at 1.1B, batch 24 on an
80 GB H100; the choice line names the fraction in effect. Library callers (benchmarks,
notebooks) keep JAX's default unless they set it before JAX starts.

The choice costs one extra compile when it falls back. It is made before the state is
created, by every process on its own devices; the result is the same on every process
of a homogeneous job (same program, same chips).
"""

from __future__ import annotations

import os

import jax
import ml_collections

from growjax.train import memory_probe
from growjax.train import state as state_lib
from growjax.train import step as step_lib

def needs_choice(cfg: ml_collections.ConfigDict) -> bool:
  m = cfg.model
  return (m.cudnn_packing == "auto" and cfg.data.get("document_masking", True)
          and jax.default_backend() == "gpu" and m.attention_impl in ("auto", "cudnn")
          and m.dtype in ("bfloat16", "float16"))


def choose(cfg: ml_collections.ConfigDict, devices=None, log=None
           ) -> ml_collections.ConfigDict:
  """`cfg` with `model.cudnn_packing` resolved ('auto' -> 'ragged' or 'mask')."""
  if cfg.model.cudnn_packing != "auto":
    return cfg
  out = cfg.copy_and_resolve_references()
  if not needs_choice(cfg):
    out.model.cudnn_packing = "mask"   # unused off the cuDNN path
    return out
  out.model.cudnn_packing = "ragged"
  setup = state_lib.build(out, devices)
  need = memory_probe.train_step_bytes(setup)
  limit = memory_probe.device_limit(setup.mesh.devices.flat)
  gib = 2 ** 30
  if log is None:  # flushed now: a run killed later must not lose the line
    log = (lambda *_: None) if jax.process_index() else (lambda m: print(m, flush=True))
  fraction = memory_fraction()
  fast = ("; batches of single-document rows: plain causal attention "
          "(config.model.single_document_fast_path)"
          if step_lib.fast_path_enabled(setup) else "")
  if memory_probe.fits(need, limit):
    log(f"document masking: cuDNN packed layout (config.model.cudnn_packing=ragged, "
        f"max_segments={out.model.max_segments}): {need / gib:.1f} GiB per device"
        + (f" of {limit / gib:.1f} ({fraction})" if limit else "") + fast)
    return out
  out.model.cudnn_packing = "mask"
  raise_it = "" if _fraction_value() >= 0.94 else f", or {FRACTION_VAR}=0.94,"
  log(f"document masking: cuDNN with a boolean mask (config.model.cudnn_packing=mask): the "
      f"faster packed layout needs {need / gib:.1f} GiB per device, the limit is "
      f"{limit / gib:.1f} GiB ({fraction}) — a smaller batch{raise_it} lets it fit{fast}")
  return out


FRACTION_VAR = "XLA_PYTHON_CLIENT_MEM_FRACTION"


def memory_fraction() -> str:
  """The GPU memory fraction JAX runs with, in words for the choice line."""
  value = os.environ.get(FRACTION_VAR)
  return f"{FRACTION_VAR}={value}" if value else f"JAX's default {FRACTION_VAR}=0.75"


def _fraction_value() -> float:
  try:
    return float(os.environ.get(FRACTION_VAR) or 0.75)
  except ValueError:
    return 0.75
