"""Remat policies: what the backward recomputes, read from the traced program.

`dots` keeps the matmul outputs, so cuDNN's flash attention (a custom call, not a
matmul) runs its forward again inside the backward to get back the output and softmax
statistics its backward needs. `dots_attention` also keeps what the attention kernel
returns: one forward per layer. On the H100 that is +2.6% at 1.1B and +3.3% at 410M
(benchmarks/RESULTS.md, where the optimized HLO shows the same 2 -> 1). The cuDNN path is
traced here without a GPU (its version and architecture checks stubbed); nothing is
lowered or run."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

from growjax import model
from growjax.config import MODEL_PRESETS

# equations binding the kernels (not the rule names a custom_vjp's parameters print)
FWD = re.compile(r"= dot_product_attention_fwd(_wrapper)?\[")
BWD = re.compile(r"= dot_product_attention_bwd(_wrapper)?\[")


@pytest.fixture
def traceable_cudnn(monkeypatch):
  monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda cap: True)


def _grad_jaxpr(remat: str) -> str:
  cfg = dataclasses.replace(model.ModelConfig(**MODEL_PRESETS["tiny"]), num_layers=3,
                            remat_policy=remat, attention_impl="cudnn", dtype="bfloat16")
  params = jax.eval_shape(lambda: model.init_params(
      dataclasses.replace(cfg, attention_impl="xla"), jax.random.key(0)))
  tokens = jnp.zeros((2, 128), jnp.int32)

  def loss(p):
    return model.Transformer(cfg).apply({"params": p}, tokens).astype(jnp.float32).mean()

  return str(jax.make_jaxpr(jax.grad(loss))(params))


@pytest.mark.parametrize("remat,forward_calls", [
    ("none", 1), ("dots", 2), ("full", 2), ("dots_attention", 1)])
def test_which_policies_rerun_the_attention_forward_in_the_backward(traceable_cudnn, remat,
                                                                    forward_calls):
  # Layers are one nn.scan: the counts are per layer body (forward scan + backward scan).
  text = _grad_jaxpr(remat)
  assert len(FWD.findall(text)) == forward_calls
  assert len(BWD.findall(text)) == 1


def test_the_policy_keeps_exactly_the_attention_kernels_outputs():
  saveable = model.attention_kernel_saveable
  for name in model.ATTENTION_KERNELS:
    assert saveable(type("P", (), {"name": name})())
  for name in ("dot_general", "exp", "custom_vjp_call", "dot_product_attention_bwd"):
    assert not saveable(type("P", (), {"name": name})())
  # the named primitives exist in this JAX (a rename would silently turn the policy off)
  assert cudnn_attention._dot_product_attention_fwd_p_wrapper.name in model.ATTENTION_KERNELS
  assert cudnn_attention._dot_product_attention_fwd_p.name in model.ATTENTION_KERNELS


def _fp8_grad(remat: str, precision: str):
  cfg = dataclasses.replace(model.ModelConfig(**MODEL_PRESETS["tiny"]), num_layers=3,
                            remat_policy=remat, dtype="bfloat16", matmul_precision=precision)
  params = model.init_params(dataclasses.replace(cfg, remat_policy="none"), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.vocab_size)

  def loss(p):
    return model.Transformer(cfg).apply({"params": p}, tokens).astype(jnp.float32).mean()

  return params, loss


AMAX = re.compile(r"= reduce_max\[")


@pytest.mark.parametrize("remat,amax_reductions", [
    ("none", 21), ("dots", 21), ("dots_attention", 21), ("full", 35)])
def test_fp8_scales_are_kept_so_the_backward_does_not_reduce_operands_again(
    remat, amax_reductions):
  """FP8 current scaling reduces amax(|x|) of every operand it quantizes. Under `dots`
  the backward recomputes the norm and SwiGLU outputs the forward quantized; the policy
  keeps their scales (float32 scalars, growjax.model.fp8.SCALE_NAME), so it does not reduce
  them a second time: as many amax reductions as with nothing recomputed (3 layers in
  one scan body: 7 + 7 operands forward, 7 output gradients backward). `full` keeps
  nothing and reduces 14 again. The remaining reduce_max of each program is the XLA
  attention's softmax, in bf16 as well."""
  texts = {p: str(jax.make_jaxpr(jax.grad(_fp8_grad(remat, p)[1]))(_fp8_grad(remat, p)[0]))
           for p in ("fp8", "bf16")}
  assert len(AMAX.findall(texts["fp8"])) - len(AMAX.findall(texts["bf16"])) == \
      amax_reductions


def test_keeping_the_scales_changes_no_number():
  params, loss_none = _fp8_grad("none", "fp8")
  _, loss_dots = _fp8_grad("dots", "fp8")
  g_none, g_dots = jax.jit(jax.grad(loss_none))(params), jax.jit(jax.grad(loss_dots))(params)
  for a, b in zip(jax.tree.leaves(g_none), jax.tree.leaves(g_dots)):
    assert jnp.array_equal(a, b)


def test_remat_prevent_cse_reaches_the_program_and_changes_no_number():
  """`remat_prevent_cse` (a memory switch: 11-14 GiB less at 1.1B unrolled on an H100,
  for 1-4% of speed) is passed to remat, and the gradients stay the same."""
  base = dataclasses.replace(model.ModelConfig(**MODEL_PRESETS["tiny"]), num_layers=2,
                             remat_policy="dots", attention_impl="xla", scan_unroll=0)
  params = model.init_params(base, jax.random.key(0))
  tokens = jnp.arange(64, dtype=jnp.int32).reshape(2, 32) % base.vocab_size
  grads, programs = [], []
  for prevent in (False, True):
    cfg = dataclasses.replace(base, remat_prevent_cse=prevent)

    def loss(p):
      return model.Transformer(cfg).apply({"params": p}, tokens).astype(jnp.float32).mean()
    programs.append(str(jax.make_jaxpr(jax.grad(loss))(params)))
    grads.append(jax.jit(jax.grad(loss))(params))
  assert "prevent_cse=False" in programs[0] and "prevent_cse=True" not in programs[0]
  assert "prevent_cse=True" in programs[1]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    assert jnp.allclose(a, b, rtol=1e-5, atol=1e-7)
