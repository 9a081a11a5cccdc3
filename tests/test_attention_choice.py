"""config.model.cudnn_packing='auto': the choice between cuDNN's packed layout and the
boolean mask, made from the compiled program's memory (growjax.train.attention_choice)."""

import jax
import jax.numpy as jnp

from growjax.train import attention_choice, memory_probe
from growjax.config import base_config
from growjax.model import ModelConfig


def test_auto_is_the_default_and_means_mask_off_the_gpu():
  cfg = base_config("tiny")
  assert cfg.model.cudnn_packing == "auto"
  ModelConfig.from_config(cfg.model).validate()
  chosen = attention_choice.choose(cfg, log=lambda *_: (_ for _ in ()).throw(AssertionError))
  assert chosen.model.cudnn_packing == "mask" and cfg.model.cudnn_packing == "auto"
  explicit = base_config("tiny")
  explicit.model.cudnn_packing = "ragged"
  assert attention_choice.choose(explicit) is explicit


def test_the_packed_layout_is_kept_only_where_it_fits():
  gib = 2 ** 30
  assert memory_probe.fits(50 * gib, 60 * gib)
  assert not memory_probe.fits(67 * gib, 60 * gib)    # 1.1B, batch 24, ragged at 0.75
  assert memory_probe.fits(67 * gib, 75 * gib)        # the same at 0.94
  assert not memory_probe.fits(59 * gib, 60 * gib)    # inside the headroom
  assert memory_probe.fits(10 ** 15, None)            # a backend that does not say


def test_program_bytes_counts_donated_state_once():
  x = jnp.ones((256, 256), jnp.float32)
  f = jax.jit(lambda a: a * 2.0 + 1.0, donate_argnums=0)
  compiled = f.lower(x).compile()
  m = compiled.memory_analysis()
  got = memory_probe.program_bytes(compiled)
  assert got == (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                 + m.temp_size_in_bytes)
  assert got >= x.nbytes
