"""Document masking's single-document fast path (`config.model.single_document_fast_path`):
a batch whose rows are each one whole document takes plain causal attention through a
`lax.cond` around the gradient, with the same result as the masked step; any other batch
takes the masked branch. Proven on 8 CPU devices (the predicate is global over the
sharded batch), in the compiled HLO (one conditional, two branches), in the compiled
memory (the branches share their temporaries) and through `growjax train`."""

import json
import os

import jax
import numpy as np
import pytest

from growjax import cli
from growjax.train import state as state_lib
from growjax import train
from tiny import tiny_base

B, T = 8, 32


def _cfg(mode: str):
  c = tiny_base()
  c.data.seq_len, c.train.global_batch_size = T, B
  c.model.single_document_fast_path = mode
  return c


def _batches():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 384, (B, T + 1), dtype=np.int32)
  single = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "segment_ids": np.ones((B, T), np.int32),
            "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
            "loss_mask": np.ones((B, T), np.int32)}
  mixed = {k: v.copy() for k, v in single.items()}
  mixed["segment_ids"][5, 20:] = 2            # one row, on one device, crosses a boundary
  mixed["positions"][5, 20:] = np.arange(T - 20)
  plain = {k: v for k, v in single.items() if k not in train.DOCUMENT_KEYS}
  return single, mixed, plain


@pytest.fixture(scope="module")
def steps():
  """(setup, compiled step) for 'on' (the cond) and 'off' (masked; also the plain step
  when given a batch without the document keys), compiled once for the file."""
  single, _, plain = _batches()
  out = {}
  for mode in ("on", "off"):
    setup = state_lib.build(_cfg(mode))
    step = train.make_train_step(setup)
    with jax.set_mesh(setup.mesh):
      out[mode] = (setup, step.lower(setup.abstract_state, train.to_global(
          single, setup.batch_sharding)).compile())
  setup = out["off"][0]
  with jax.set_mesh(setup.mesh):
    out["plain"] = (setup, train.make_train_step(setup).lower(
        setup.abstract_state, train.to_global(plain, setup.batch_sharding)).compile())
  return out


def _one_step(setup, compiled, batch):
  state = state_lib.init_state(setup, jax.random.key(0))
  with jax.set_mesh(setup.mesh):
    state, metrics = compiled(state, train.to_global(batch, setup.batch_sharding))
  return jax.tree.map(np.asarray, state.params), float(metrics["loss"])


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
  assert a[1] == b[1]


def test_single_document_batch_takes_the_plain_branch_with_the_masked_result(steps):
  single, mixed, plain = _batches()
  cond = _one_step(*steps["on"], single)
  masked = _one_step(*steps["off"], single)
  plain_result = _one_step(*steps["plain"], plain)
  _assert_same(cond, masked)         # bit for bit: params after one step, and the loss
  _assert_same(cond, plain_result)

  # One row of eight with a document boundary: every device takes the masked branch.
  cond_mixed = _one_step(*steps["on"], mixed)
  _assert_same(cond_mixed, _one_step(*steps["off"], mixed))
  assert cond_mixed[1] != plain_result[1]   # the plain branch would be wrong here


def test_the_compiled_step_holds_one_conditional_with_both_branches(steps):
  hlo = steps["on"][1].as_text()
  conditionals = [l for l in hlo.splitlines() if " conditional(" in l]
  assert len(conditionals) == 1, conditionals
  assert conditionals[0].count("%") >= 3 and "branch_computations={" in conditionals[0]
  branches = conditionals[0].split("branch_computations={")[1].split("}")[0].split(",")
  assert len(branches) == 2
  assert " conditional(" not in steps["off"][1].as_text()


def test_the_branches_share_their_temporaries(steps):
  temp = {k: steps[k][1].memory_analysis().temp_size_in_bytes for k in steps}
  print(f"temp bytes per device: cond {temp['on']}, masked {temp['off']}, "
        f"plain {temp['plain']}")
  assert temp["on"] <= max(temp["off"], temp["plain"]) * 1.10 + 64 * 1024, temp
  assert temp["on"] < temp["off"] + temp["plain"], temp


def test_auto_is_off_on_the_cpu_and_a_bad_value_is_named():
  assert not train.fast_path_enabled(state_lib.build(_cfg("auto")))
  assert train.fast_path_enabled(state_lib.build(_cfg("on")))
  no_masking = _cfg("on")
  no_masking.data.document_masking = False
  assert not train.fast_path_enabled(state_lib.build(no_masking))
  with pytest.raises(ValueError, match=r"config.model.single_document_fast_path='yes'; "
                                       r"choose 'auto', 'on' or 'off'"):
    state_lib.build(_cfg("yes"))
  # A compute field: a checkpoint written with it 'on' is the same model as one with 'off'.
  assert "single_document_fast_path" in train.COMPUTE_FIELDS


def test_growjax_train_with_the_fast_path_on_equals_off(tmp_path, data_dir, monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")   # the CLI leaves it
  losses = {}
  for mode in ("on", "off"):
    workdir = tmp_path / mode
    code = cli.main(["growjax", "train", "--config", "configs/tiny.py",
                     "--workdir", str(workdir), "--config.model.num_layers=2",
                     f"--config.data.seq_len={T}", f"--config.train.global_batch_size={B}",
                     "--config.train.steps=4", "--config.train.log_every=1",
                     "--config.train.eval_every=0", "--config.train.checkpoint_every=100",
                     "--config.train.final_sample_tokens=0",
                     "--config.train.async_checkpointing=False",
                     "--config.metrics.tensorboard=False",
                     f"--config.model.single_document_fast_path={mode}"])
    assert code == 0
    rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    losses[mode] = {r["step"]: r["loss"] for r in rows if "loss" in r}
  assert sorted(losses["on"]) == [1, 2, 3, 4]
  assert losses["on"] == losses["off"]


def test_the_cli_sets_the_gpu_memory_fraction_only_where_unset(monkeypatch, capsys):
  var = "XLA_PYTHON_CLIENT_MEM_FRACTION"
  monkeypatch.setenv(var, "x")     # restored (here: removed) after the test
  monkeypatch.delenv(var)
  assert cli.main(["growjax", "--help"]) == 0
  assert os.environ[var] == cli.GPU_MEM_FRACTION == "0.94"
  monkeypatch.setenv(var, "0.5")
  assert cli.main(["growjax", "--help"]) == 0
  assert os.environ[var] == "0.5"


def test_the_choice_line_names_the_memory_fraction_in_effect(monkeypatch):
  from growjax.train import attention_choice
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")
  assert attention_choice.memory_fraction() == "XLA_PYTHON_CLIENT_MEM_FRACTION=0.94"
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
  assert attention_choice.memory_fraction() == \
      "JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION=0.75"


def test_with_grad_accumulation_each_micro_batch_chooses_and_equals_the_masked_step():
  """Accumulation over 2 micro-batches (rows interleaved: row r is in micro-batch r % 2):
  the cond sits inside the accumulation scan, so a batch whose one mixed row is in
  micro-batch 1 runs micro-batch 0 plain and 1 masked — the same params as all masked."""
  single, mixed, _ = _batches()
  both = lambda a, b: {k: np.concatenate([a[k], b[k]]) for k in a}
  batches = (both(single, single), both(single, mixed))   # mixed row 13: micro-batch 1
  compiled = {}
  for mode in ("on", "off"):
    c = _cfg(mode)
    c.train.global_batch_size, c.train.grad_accum_steps = 2 * B, 2
    setup = state_lib.build(c)
    with jax.set_mesh(setup.mesh):
      compiled[mode] = (setup, train.make_train_step(setup).lower(
          setup.abstract_state, train.to_global(batches[0], setup.batch_sharding)).compile())
  hlo = compiled["on"][1].as_text()
  assert hlo.count(" conditional(") == 1 and " while(" in hlo
  for batch in batches:
    _assert_same(_one_step(*compiled["on"], batch), _one_step(*compiled["off"], batch))


def test_the_choice_line_on_a_gpu_names_the_fraction_and_the_fast_path(monkeypatch):
  """attention_choice.choose's GPU decision, run on CPU (its compiled program is the real
  cond step; the device limit is faked): the line names the fraction and the fast path."""
  from growjax.train import attention_choice, memory_probe
  monkeypatch.setattr(attention_choice, "needs_choice", lambda cfg: True)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")
  lines = []
  for limit in (2 ** 40, 2 ** 10):
    monkeypatch.setattr(memory_probe, "device_limit", lambda devices: limit)
    chosen = attention_choice.choose(_cfg("on"), log=lines.append)
    assert chosen.model.cudnn_packing == ("ragged" if limit > 2 ** 30 else "mask")
  fast = ("; batches of single-document rows: plain causal attention "
          "(config.model.single_document_fast_path)")
  assert lines[0].startswith("document masking: cuDNN packed layout") and lines[0].endswith(
      "of 1024.0 (XLA_PYTHON_CLIENT_MEM_FRACTION=0.94)" + fast), lines[0]
  assert lines[1].endswith("the limit is 0.0 GiB (XLA_PYTHON_CLIENT_MEM_FRACTION=0.94) — a "
                           "smaller batch lets it fit" + fast), lines[1]
