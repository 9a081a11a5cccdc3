"""`ModelConfig`'s fields each declare what they are: architecture (what a checkpoint is)
or compute (how it is computed, which a run from a checkpoint may change); the trainer's
`COMPUTE_FIELDS` and the reading configs follow from that declaration."""

import dataclasses

from growjax import train
from growjax.model import ModelConfig
from growjax.model.config import ARCHITECTURE, COMPUTE, KIND

CFG = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, remat_policy="full", attention_impl="cudnn")


def test_every_field_is_architecture_or_compute_and_the_trainer_reads_the_split():
  kinds = {f.name: f.metadata[KIND] for f in dataclasses.fields(ModelConfig)}
  assert set(kinds.values()) == {ARCHITECTURE, COMPUTE}
  assert train.COMPUTE_FIELDS == ModelConfig.compute_fields()
  assert set(CFG.architecture()) | set(ModelConfig.compute_fields()) == set(kinds)
  assert {"remat_policy", "attention_impl", "matmul_precision"} <= set(train.COMPUTE_FIELDS)
  assert {"embed_dim", "vocab_size", "tie_embeddings", "param_dtype"} <= set(
      CFG.architecture())


def test_reading_configs_change_only_how_the_model_is_computed():
  read = CFG.for_inference()
  assert read.remat_policy == "none" and read.architecture() == CFG.architecture()
  exact = CFG.for_exact_logits()
  assert (exact.dtype, exact.remat_policy, exact.attention_impl) == ("float32", "none", "xla")
