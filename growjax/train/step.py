"""The jitted train and eval steps: pure `(state, batch) -> (state, metrics)` functions
with in/out shardings and donated state; gradient accumulation, the single-document fast
path (one `lax.cond`), delayed FP8's one-off calibration, MSG's masked step."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from growjax import sharding
from growjax.model import ModelConfig, Transformer, head_kernel
from growjax.model import fp8
from growjax.model import loss as loss_lib
from growjax.model import moe
from growjax.train import mask_ramp
from growjax.train import state as state_lib
from growjax.train.state import (Setup, TrainState)


DOCUMENT_KEYS = ("segment_ids", "positions")  # what document masking reads of a batch


def loss_fn(params, batch, model_cfg: ModelConfig, train_cfg, z_loss: float, masks=None,
            fp8_history=None):
  """Mean loss over the targets `batch['loss_mask']` counts (all when absent). With
  `segment_ids` / `positions` in the batch, attention stays inside each packed
  document and rotary positions restart at each one. `masks`: MSG growth's mask values
  during a ramp (`growjax.train.mask_ramp`), else None. `fp8_history`: delayed FP8 scaling's
  amax histories (their gradient is the amaxes this pass observed), else None."""
  variables = {"params": params}
  if fp8_history is not None:
    variables[fp8.HISTORY_COLLECTION] = fp8_history
  mutable = [moe.STATS_COLLECTION] if model_cfg.num_experts else False
  out = Transformer(model_cfg).apply(
      variables, batch["inputs"], segment_ids=batch.get("segment_ids"),
      positions=batch.get("positions"), return_hidden=True, masks=masks, mutable=mutable)
  hidden, sown = out if mutable else (out, None)
  loss, aux = loss_lib.cross_entropy(
      hidden, head_kernel(params, model_cfg), batch["targets"], z_loss=z_loss,
      chunk_len=train_cfg.loss_chunk_len, dtype=model_cfg.compute_dtype,
      mask_BxT=batch.get("loss_mask"))
  if sown is None:
    return loss, aux
  return moe_losses(loss, aux, moe.layer_stats(sown), train_cfg)


def moe_losses(loss, aux: dict, stats: dict, train_cfg) -> tuple[jax.Array, dict]:
  """An MoE model's loss: the language-model loss plus config.train.moe_balance_loss x
  the router's load-balancing loss and moe_router_z_loss x its z-loss, each the mean
  over layers; logged as their means and per layer (`moe_balance_l0`, ...), with the
  fraction of routed rows dropped at a capacity."""
  balance = train_cfg.get("moe_balance_loss", 0.01) * jnp.mean(stats["balance"])
  router_z = train_cfg.get("moe_router_z_loss", 1e-3) * jnp.mean(stats["z"])
  aux = dict(aux, moe_balance_loss=balance, moe_router_z_loss=router_z,
             moe_dropped=jnp.mean(stats["dropped"]))
  for name in ("balance", "z", "dropped"):
    aux.update({f"moe_{name}_l{i}": v for i, v in enumerate(stats[name])})
  return loss + balance + router_z, aux


def model_batch(batch: dict, cfg) -> dict:
  """The batch the step computes on: without the document keys when
  `config.data.document_masking` is off (one causal sequence per window)."""
  if cfg.data.get("document_masking", True):
    return batch
  return {k: v for k, v in batch.items() if k not in DOCUMENT_KEYS}


def fast_path_enabled(setup: Setup) -> bool:
  """`config.model.single_document_fast_path` resolved: 'auto' is on where the devices
  are GPUs (there the masked cuDNN kernels cost 4-8% at 1.1B; elsewhere the second branch
  would only double the step's compile time), and only with document masking on."""
  mode = setup.model_cfg.single_document_fast_path
  if not setup.cfg.data.get("document_masking", True) or mode == "off":
    return False
  return mode == "on" or setup.mesh.devices.flat[0].platform == "gpu"


def single_documents(batch: dict) -> jax.Array:
  """True where every row of `batch` is one whole document: segment id 1 everywhere (no
  padding, no document boundary) and positions 0..T-1 — what causal attention without the
  document keys computes. A scalar over the global batch: every device agrees on it."""
  segment_ids_BxT, positions_BxT = batch["segment_ids"], batch["positions"]
  arange_T = jnp.arange(positions_BxT.shape[-1], dtype=positions_BxT.dtype)
  return jnp.all(segment_ids_BxT == 1) & jnp.all(positions_BxT == arange_T)


def single_document_cond(fn: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
  """`fn(params, batch)` behind a `lax.cond`: a batch of single-document rows takes `fn`
  without `segment_ids` / `positions` (plain causal attention: the same values, without
  the masked kernel's cost), any other batch `fn` as given. `fn` is the whole
  value-and-grad, so the two branches' autodiff residuals live in separate branches of
  the conditional and XLA can share their temporaries."""

  def plain(params, batch):
    return fn(params, {k: v for k, v in batch.items() if k not in DOCUMENT_KEYS})

  def either(params, batch):
    if not all(k in batch for k in DOCUMENT_KEYS):
      return fn(params, batch)
    return jax.lax.cond(single_documents(batch), plain, fn, params, batch)

  return either


def make_train_step(setup: Setup, ramp: mask_ramp.Plan | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted train step; with `ramp`, the step of a grown run's MSG mask ramp: the
  state carries the masks, the step computes with them and writes the next step's.
  With the single-document fast path (`fast_path_enabled`), each micro-batch (the whole
  batch without accumulation) chooses its branch on its own."""
  cfg, tx = setup.cfg, setup.tx

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with sharding.activation_sharding(setup.mesh, setup.rules):
      grads, aux, seen = _gradients(setup, state, model_batch(batch, cfg))
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      grad_norm = optax.global_norm(grads)
      # A NaN/Inf loss or gradient norm: keep params and optimizer state (per leaf, so the
      # TrainState structure is unchanged); the step counter still advances.
      ok = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      history = keep(fp8.push_history(state.fp8_history, seen), state.fp8_history)
    metrics = dict(aux, grad_norm=grad_norm, lr=setup.schedule(state.step),
                   skipped=(~ok).astype(jnp.float32))
    new = TrainState(state.step + 1, params, opt_state, fp8_history=history)
    if ramp is None:
      return new, metrics
    metrics["mask_ramp"] = jnp.clip((state.step - ramp.start) / ramp.ramp, 0.0, 1.0)
    return new.replace(masks=ramp.values(state.step + 1)), metrics

  shardings = state_shardings(setup, ramp)
  return jax.jit(step_fn, in_shardings=(shardings, setup.batch_sharding),
                 out_shardings=(shardings, sharding.replicated(setup.mesh)),
                 donate_argnums=0)


def _gradients(setup: Setup, state: TrainState, batch: dict) -> tuple[Any, dict, Any]:
  """(gradients, loss metrics, observed FP8 amaxes) of one batch, averaged over
  `config.train.grad_accum_steps` micro-batches; the amaxes (None without delayed FP8
  scaling) are the largest any micro-batch saw. With the single-document fast path
  (`fast_path_enabled`), each micro-batch chooses its branch on its own."""
  cfg, mcfg = setup.cfg, setup.model_cfg
  accum = int(cfg.train.grad_accum_steps)
  grad_fn = jax.value_and_grad(
      lambda ph, b: loss_fn(ph[0], b, mcfg, cfg.train, cfg.train.z_loss, state.masks, ph[1]),
      has_aux=True)
  if fast_path_enabled(setup):
    grad_fn = single_document_cond(grad_fn)
  differentiated = (state.params, state.fp8_history)
  if accum == 1:
    (_, aux), (grads, seen) = grad_fn(differentiated, batch)
    return grads, aux, seen
  # Rows (B/A, A) keep each device's rows on that device for every micro-batch.
  micro = jax.tree.map(
      lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)
  micro = jax.lax.with_sharding_constraint(
      micro, NamedSharding(setup.mesh, P(None, *setup.batch_sharding.spec)))

  def accumulate(carry, mb):
    (_, aux), (g, s) = grad_fn(differentiated, mb)
    grads, aux_sum, seen = carry
    return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, aux_sum, aux),
            jax.tree.map(jnp.maximum, seen, s)), None

  aux_shapes = jax.eval_shape(lambda: grad_fn(differentiated, jax.tree.map(
      lambda x: x[0], micro)))[0][1]
  zeros = (jax.tree.map(jnp.zeros_like, state.params),
           jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shapes),
           jax.tree.map(jnp.zeros_like, state.fp8_history))
  (grads, aux, seen), _ = jax.lax.scan(accumulate, zeros, micro)
  grads, aux = jax.tree.map(lambda x: x / accum, (grads, aux))
  return grads, aux, seen


def fp8_ready(setup: Setup, state: TrainState, batch: dict) -> TrainState:
  """`state` with calibrated amax histories (for scripts that call the train step
  directly, as `growjax train` does before its first step); unchanged without delayed
  FP8 scaling or when they already hold observations."""
  if state_lib.fp8_calibrated(state):
    return state
  with jax.set_mesh(setup.mesh):
    return make_fp8_calibration(setup)(state, batch)


def make_fp8_calibration(setup: Setup, ramp: mask_ramp.Plan | None = None
                         ) -> Callable[[TrainState, dict], TrainState]:
  """`(state, batch) -> state` with every amax history holding what one current-scaling
  forward and backward pass over `batch` observes (params untouched): run once before
  the first delayed-scaling step of a fresh, grown or imported model, so that step
  scales exactly as current scaling would."""
  def calibrate(state: TrainState, batch: dict) -> TrainState:
    with sharding.activation_sharding(setup.mesh, setup.rules), fp8.calibrating():
      _, _, seen = _gradients(setup, state, model_batch(batch, setup.cfg))
    zero = jax.tree.map(jnp.zeros_like, state.fp8_history)
    return state.replace(fp8_history=fp8.push_history(zero, seen))

  shardings = state_shardings(setup, ramp)
  return jax.jit(calibrate, in_shardings=(shardings, setup.batch_sharding),
                 out_shardings=shardings, donate_argnums=0)


def state_shardings(setup: Setup, ramp: mask_ramp.Plan | None) -> TrainState:
  """The train state's shardings: with the ramp's masks (replicated) when there is one,
  and delayed FP8 scaling's amax histories (replicated) when the model uses them."""
  history = jax.tree.map(lambda a: a.sharding, state_lib.fp8_history_abstract(setup))
  shardings = setup.state_shardings.replace(fp8_history=history)
  if ramp is None:
    return shardings
  return shardings.replace(masks=ramp.shardings(setup.mesh))


def step_abstract_state(setup: Setup) -> TrainState:
  """The abstract state the train step takes (to lower or compile it without arrays):
  the model's, with delayed FP8 scaling's amax histories when the model uses them."""
  return setup.abstract_state.replace(fp8_history=state_lib.fp8_history_abstract(setup))


def abstract_state(setup: Setup, ramp: mask_ramp.Plan | None, step: int) -> TrainState:
  """The abstract state a checkpoint of this run at `step` holds: with the masks when
  `step` is inside the ramp. (Delayed FP8's amax histories, where its writer kept them,
  come back through `Checkpoints.restore(..., keep_fp8_history=True)` at their saved
  shapes, and `state.with_fp8_history` fits them to this run.)"""
  if ramp is None or not ramp.active(step):
    return setup.abstract_state
  return setup.abstract_state.replace(masks=ramp.abstract(setup.mesh))


def make_eval_step(setup: Setup, ramp: mask_ramp.Plan | None = None
                   ) -> Callable[..., jax.Array]:
  """`(params, batch) -> loss`; with `ramp`, `(params, batch, masks) -> loss`."""
  mcfg, cfg = setup.model_cfg, setup.cfg
  fast = fast_path_enabled(setup)

  def eval_fn(params, batch, masks=None):
    batch = model_batch(batch, cfg)
    with sharding.activation_sharding(setup.mesh, setup.rules):
      loss = lambda p, b: loss_fn(p, b, mcfg, cfg.train, 0.0, masks)[1]["loss"]
      return (single_document_cond(loss) if fast else loss)(params, batch)

  in_shardings = (setup.state_shardings.params, setup.batch_sharding)
  if ramp is not None:
    in_shardings += (ramp.shardings(setup.mesh),)
  return jax.jit(eval_fn, in_shardings=in_shardings,
                 out_shardings=sharding.replicated(setup.mesh))
