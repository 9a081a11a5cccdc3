"""μP's two checks as functions: the coordinate check and learning-rate transfer.

`coord_check` trains one model for a few Adam steps on a fixed random batch and records,
per step, the RMS of every layer's output (the residual stream after each block), of the
final hidden state and of the logits, and the RMS of each step's change of them. Under a
correct μP these stay flat as the width grows (Yang et al. 2022, "Tensor Programs V",
section 7: the coordinate check); under SP the logits' change grows with the width.
`final_loss` is the cost of one point of the learning-rate-transfer sweep. Both are
small enough for a CPU (benchmarks/mup_coord_check.py, benchmarks/mup_lr_transfer.py,
tests/test_mup.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from growjax import model as model_lib
from growjax.model import ModelConfig, Transformer, attention, head_kernel, init_params
from growjax.model.transformer import Block, RMSNorm
from growjax.train import optimizer as opt_lib


def toy_config(width: int, depth: int, parametrization: str, *, base_width: int = 64,
               base_depth: int = 2, alpha: float = 1.0, vocab: int = 256,
               head_dim: int = 32) -> ModelConfig:
  """A float32 toy LLaMA of `width` x `depth` (heads of `head_dim`, MLP 3x width) under
  'sp' or 'mup' with the given base shape."""
  return ModelConfig(
      vocab_size=vocab, num_layers=depth, embed_dim=width, num_heads=width // head_dim,
      num_kv_heads=width // head_dim, head_dim=head_dim, mlp_dim=3 * width,
      dtype="float32", attention_impl="xla", parametrization=parametrization,
      mup_base_embed_dim=base_width, mup_base_num_layers=base_depth, mup_depth_alpha=alpha)


def _opt_config(lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                                        clip_norm=0.0, decay_embeddings=False,
                                        decay_norms=False))


class _OneLayer(nn.Module):
  """One block under the scanned blocks' name, so its parameters are found in the table."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, rotary):
    return Block(self.cfg, name="layers")(x, rotary)[0]


class _FinalNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    return RMSNorm(self.cfg, name="final_norm")(x)


def activations(params, cfg: ModelConfig, tokens_BxT) -> dict:
  """Every block's output, the final hidden state and the logits (float32)."""
  x = jnp.take(params["embedding"], tokens_BxT, axis=0).astype(jnp.float32)
  positions = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)[None]
  rotary = attention.rotary_tables(positions, cfg.head_dim, cfg.rope_theta)
  out = {"embed": x}
  for i in range(cfg.num_layers):
    layer = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    x = _OneLayer(cfg).apply({"params": {"layers": layer}}, x, rotary)
    out[f"layer{i}"] = x
  h = _FinalNorm(cfg).apply({"params": {"final_norm": params["final_norm"]}}, x)
  out["hidden"] = h
  out["logits"] = h @ head_kernel(params, cfg)
  return out


def _rms(x) -> float:
  return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))))


def _loss(params, cfg, tokens_BxT):
  logits = Transformer(cfg).apply({"params": params}, tokens_BxT[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxT[:, 1:]).mean()


def coord_check(cfg: ModelConfig, lr: float, steps: int = 4, batch: int = 4,
                seq_len: int = 64, seed: int = 0) -> dict:
  """Per step t = 0..steps: {name: RMS of the activation}, and from t = 1 the RMS of
  its change since step 0 (`d_<name>`), under Adam at a constant `lr` with μP's
  learning-rate multipliers when `cfg` is μP."""
  params = init_params(cfg, jax.random.key(seed))
  tokens = jax.random.randint(jax.random.key(seed + 1), (batch, seq_len + 1), 0,
                              cfg.vocab_size)
  tx = opt_lib.make_optimizer(_opt_config(lr), optax.constant_schedule(lr),
                              model_lib.logical_axes(cfg), cfg)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, cfg, tokens)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  probe = jax.jit(lambda p: activations(p, cfg, tokens[:, :-1]))
  first = probe(params)
  rows = [{k: _rms(v) for k, v in first.items()}]
  for _ in range(steps):
    params, state = step(params, state)
    acts = probe(params)
    row = {k: _rms(v) for k, v in acts.items()}
    row.update({f"d_{k}": _rms(acts[k] - first[k]) for k in acts})
    rows.append(row)
  return {"width": cfg.embed_dim, "depth": cfg.num_layers,
          "parametrization": cfg.parametrization, "lr": lr, "steps": rows}


def final_loss(cfg: ModelConfig, lr: float, steps: int, data_BxT: np.ndarray,
               batch: int = 8, seed: int = 0) -> float:
  """Mean loss of the last 10% of `steps` Adam steps at a constant `lr` (no warmup
  beyond 10% of the steps) on consecutive rows of `data_BxT`: one point of the
  learning-rate-transfer sweep."""
  params = init_params(cfg, jax.random.key(seed))
  warm = max(steps // 10, 1)
  schedule = optax.linear_schedule(0.0, lr, warm)
  tx = opt_lib.make_optimizer(_opt_config(lr), schedule, model_lib.logical_axes(cfg), cfg)
  state = tx.init(params)

  @jax.jit
  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(_loss)(params, cfg, tokens)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  n = data_BxT.shape[0]
  for i in range(steps):
    rows = np.arange(i * batch, (i + 1) * batch) % n
    params, state, loss = step(params, state, jnp.asarray(data_BxT[rows]))
    losses.append(float(loss))
  tail = losses[-max(steps // 10, 1):]
  return float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("inf")


__all__ = ["activations", "coord_check", "final_loss", "toy_config"]
