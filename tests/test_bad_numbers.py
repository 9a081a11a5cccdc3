"""Bad numbers never lose a run: a NaN/Inf step is skipped and counted (params kept),
max_bad_steps in a row stop the run with one line naming the last good checkpoint, and
a loss spike rolls back to the last checkpoint and skips the batches since it."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.train import state as state_lib
from growjax import train
from tiny import random_batches, tiny_config

POISON = 383          # a token id of the tiny model that the byte tokenizer never emits


def _poisoned_loss(factor):
  """train.loss_fn, with the loss (and so the gradient) times `factor` on a batch whose
  first token is POISON."""
  original = train.loss_fn

  def loss_fn(params, batch, *args):
    total, aux = original(params, batch, *args)
    scale = jnp.where(batch["inputs"][0, 0] == POISON, factor, 1.0)
    return total * scale, dict(aux, loss=aux["loss"] * scale)

  return loss_fn


def test_nan_step_is_skipped_counted_and_keeps_params(monkeypatch, data_dir):
  monkeypatch.setattr(train.step, "loss_fn", _poisoned_loss(jnp.nan))
  batches = random_batches(3)
  for b in batches:
    b["inputs"][0, 0] = 1
  batches[1]["inputs"][0, 0] = POISON
  setup = state_lib.build(tiny_config(fsdp=2), jax.devices()[:2])
  state = state_lib.init_state(setup, jax.random.key(0))
  step = train.make_train_step(setup)
  seen = []
  with jax.set_mesh(setup.mesh):
    for b in batches:
      state, m = step(state, train.to_global(b, setup.batch_sharding))
      seen.append((jax.device_get(state), {k: float(v) for k, v in m.items()}))
  (s1, m1), (s2, m2), (s3, m3) = seen
  assert m1["skipped"] == 0 and m2["skipped"] == 1 and m3["skipped"] == 0
  assert not np.isfinite(m2["loss"])
  assert int(s2.step) == 2 and int(s3.step) == 3        # the step counter moves on
  jax.tree.map(np.testing.assert_array_equal, s2.params, s1.params)
  jax.tree.map(np.testing.assert_array_equal, s2.opt_state, s1.opt_state)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                         s3.params, s2.params))
  assert any(changed)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(s3.params))


TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")


def _cli_train(monkeypatch, capsys, workdir, *overrides):
  args = ["growjax", "train", "--config", TINY, "--workdir", workdir,
          "--config.model.num_layers=2", "--config.data.seq_len=32",
          "--config.train.global_batch_size=8", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.train.eval_batches=1",
          "--config.train.checkpoint_every=4", "--config.train.async_checkpointing=False",
          "--config.metrics.tensorboard=False", *overrides]
  monkeypatch.setattr(sys, "argv", args)
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


def test_consecutive_bad_steps_stop_the_run_keeping_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys, data_dir):
  workdir = str(tmp_path / "run")
  code, _, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=4")
  assert code == 0, err
  # Every step from here on is NaN: three in a row stop the run.
  monkeypatch.setattr(train.step, "loss_fn",
                      lambda *a: jax.tree.map(lambda x: x * jnp.nan, train_loss(*a)))
  code, out, err = _cli_train(monkeypatch, capsys, workdir, "--config.train.steps=12",
                              "--config.train.max_bad_steps=3")
  assert code == 1
  [line] = err.strip().splitlines()
  ckpts = os.path.join(workdir, "checkpoints")
  assert line.startswith("growjax train: BadStepsError: 3 NaN/Inf steps in a row "
                         "(config.train.max_bad_steps=3), the last at step 7: ")
  assert "the last at step 7" in line and f"step 4 in {os.path.abspath(ckpts)}" in line
  assert ckpt_lib.Checkpoints(ckpts).latest_step() == 4
  assert "bad_steps_total" in open(os.path.join(workdir, "metrics.jsonl")).read()


train_loss = train.loss_fn


class _CountingIterator:
  """The train iterator, with a POISON token written into its `spike_at`-th batch."""

  def __init__(self, it, spike_at):
    self.it, self.spike_at, self.calls = it, spike_at, 0

  def __next__(self):
    batch = dict(next(self.it))
    self.calls += 1
    if self.calls == self.spike_at:
      batch["inputs"] = np.array(batch["inputs"])
      batch["inputs"][0, 0] = POISON
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def test_loss_spike_rolls_back_and_skips_the_batches(tmp_path, monkeypatch, capsys, data_dir):
  monkeypatch.setattr(train.step, "loss_fn", _poisoned_loss(20.0))
  iterators = []
  open_data = train.loop._open_data

  def counting_open_data(setup):
    host, it, eval_data = open_data(setup)
    iterators.append(_CountingIterator(it, spike_at=10))
    return host, iterators[-1], eval_data

  monkeypatch.setattr(train.loop, "_open_data", counting_open_data)
  cfg = tiny_config(fsdp=2)
  cfg.train.steps = 12
  cfg.train.spike_zscore = 4.0
  cfg.train.spike_window = 8
  history = train.train(cfg, str(tmp_path / "spike"), devices=jax.devices()[:2])
  out = capsys.readouterr().out
  assert history["rollbacks"] == [(10, 8)]
  assert ("rolled back to checkpoint step 8, skipping the 2 batches of steps 9..10"
          in out), out
  assert iterators[0].calls == 14          # 12 steps + the 2 skipped batches
  assert max(history["loss"]) == 12 and history["loss"][10] < 10
