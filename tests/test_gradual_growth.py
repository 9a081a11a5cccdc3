"""Gradual growth (issue 16): several growth events in one run (`config.growth.events`).

A three-stage run (1 -> 2 -> 4 layers, the second growth handing the Adam moments over
by `grow`) interrupted in every stage, between stages and during a growth, then rerun,
equals the run never interrupted bit for bit (losses per step, final state); every
layer of the final model trained after its growth; the FLOPs count runs on across all
stages; bad schedules are refused in one line by `growjax train` before anything runs.

The models share test_stages' shapes, mesh and LR schedule (steps 10, the 2-layer
stage on the small mesh, the 4-layer stage on the large one), so the two files hit the
same entries of the session's compilation cache.
"""

import json
import os

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import config as config_lib
from growjax import faults
from growjax.train import optimizer as opt_lib
from growjax.train import state as state_lib
from growjax.growth import offline, speedup, stages
from growjax.model import ModelConfig

from tiny import grow_config  # tests/ is on sys.path (rootdir conftest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = "2@2,4@4:stack:grow"   # 1 layer to step 2, 2 layers to step 4, 4 layers to 10
STAGES = ("stage_0", "stage_1", "stage_2")


def gradual_config():
  """test_stages' grow run (same model, mesh, batch and schedule, so the two files share
  compiled steps), grown 1 -> 2 -> 4 layers by EVENTS instead of once."""
  c = grow_config()
  c.growth.small_model = config_lib.model_config("tiny", dtype="float32", num_layers=1)
  c.growth.small_steps = 0
  c.growth.events = EVENTS
  return c


class Killed(BaseException):
  """An interruption raised in-process at a fault point (no cleanup runs past it)."""


def _state(cfg, directory, step):
  setup = state_lib.build(cfg)
  state, _, meta = ckpt_lib.Checkpoints(directory, use_async=False).restore(
      step, setup.abstract_state)
  return jax.device_get(state), meta


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("gradual") / "a")
  return workdir, stages.run(gradual_config(), workdir)


def test_schedule_stages_and_dirs():
  cfg = gradual_config()
  events = stages.check_schedule(cfg)
  assert [(e.step, e.num_layers, e.method, e.opt_state) for e in events] == [
      (2, 2, "stack", "reset"), (4, 4, "stack", "grow")]
  shapes = [(c.model.num_layers, c.train.steps, c.optimizer.decay_steps or c.train.steps,
             c.mesh.data) for c in (stages.stage_config(cfg, events, i) for i in range(3))]
  assert shapes == [(1, 2, 10, 4), (2, 4, 10, 4), (4, 10, 10, 2)]
  runs, grown = stages.run_dirs("/w", 2)
  assert runs == ["/w/stage_0", "/w/stage_1", "/w/stage_2"]
  assert grown == ["/w/grown_1", "/w/grown_2"]
  # One growth keeps the two-stage layout, so existing runs resume.
  assert stages.run_dirs("/w", 1) == (["/w/small", "/w/large"], ["/w/grown"])


def test_interrupted_everywhere_equals_uninterrupted(straight, tmp_path, monkeypatch):
  ref_dir, ref = straight
  assert {s: sorted(ref[s]["loss"]) for s in STAGES} == {
      "stage_0": [1, 2], "stage_1": [3, 4], "stage_2": [5, 6, 7, 8, 9, 10]}
  cfg, b = gradual_config(), str(tmp_path / "b")
  losses = {s: {} for s in STAGES}

  def run(stop=None, kill_at=None, nth=1):
    real, seen = faults.maybe_kill, []

    def maybe_kill(point):
      seen.append(point)
      if point == kill_at and seen.count(point) == nth:
        raise Killed(point)
      real(point)

    monkeypatch.setattr(faults, "maybe_kill", maybe_kill)
    try:
      history = stages.run(cfg, b, stop_after_steps=stop)
    except Killed:
      history = None
    finally:
      monkeypatch.setattr(faults, "maybe_kill", real)
    return history

  h = run(stop=1)                                   # stopped inside stage 0
  assert list(h) == ["stage_0"] and h["stage_0"]["stopped_at"] == 1
  losses["stage_0"].update(h["stage_0"]["loss"])
  with monkeypatch.context() as m:                  # killed between stage 0 and growth 1
    m.setattr(stages.train_lib, "train", _recording(stages.train_lib.train, losses))
    assert run(kill_at="handoff") is None
  assert not os.path.exists(f"{b}/grown_1")
  h = run(stop=1)                                   # grows, stopped inside stage 1
  assert list(h) == ["stage_1"] and h["stage_1"]["stopped_at"] == 3
  losses["stage_1"].update(h["stage_1"]["loss"])

  # Killed during growth 2: its marker written, its checkpoint not (what a SIGKILL in
  # the write leaves); the rerun clears that attempt and grows again.
  def no_save(*args, **kw):
    raise Killed("mid_grow")
  with monkeypatch.context() as m:
    m.setattr(offline, "_save", no_save)
    m.setattr(stages.train_lib, "train", _recording(stages.train_lib.train, losses))
    with pytest.raises(Killed):
      stages.run(cfg, b)
  assert sorted(os.listdir(f"{b}/grown_2")) == [offline.MARKER]
  os.makedirs(f"{b}/grown_2/4.orbax-checkpoint-tmp-0/state")   # a write cut short
  assert ckpt_lib.latest_complete_step(f"{b}/stage_1/checkpoints") == 4

  h = run(stop=2)                                   # grows again, stopped inside stage 2
  assert list(h) == ["stage_2"] and h["stage_2"]["stopped_at"] == 6
  losses["stage_2"].update(h["stage_2"]["loss"])
  h = run()                                         # the rest
  assert list(h) == ["stage_2"] and h["stage_2"]["stopped_at"] is None
  losses["stage_2"].update(h["stage_2"]["loss"])

  assert losses == {s: ref[s]["loss"] for s in STAGES}    # floats compared exactly
  final = stages.stage_config(cfg, stages.schedule(cfg), 2)
  got, _ = _state(final, f"{b}/stage_2/checkpoints", 10)
  want, _ = _state(final, f"{ref_dir}/stage_2/checkpoints", 10)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def _recording(train, losses):
  """train.train, its losses kept (a stage that finishes in a call later killed)."""
  def recorded(cfg, workdir, **kw):
    history = train(cfg, workdir, **kw)
    losses[os.path.basename(workdir)].update(history["loss"])
    return history
  return recorded


def test_every_layer_trains_after_its_growth(straight):
  ref_dir, _ = straight
  cfg = gradual_config()
  events = stages.schedule(cfg)
  final = stages.stage_config(cfg, events, 2)
  grown, meta = _state(final, f"{ref_dir}/grown_2", 4)
  assert meta["grown_from"]["opt_state"] == "grow"
  trained, _ = _state(final, f"{ref_dir}/stage_2/checkpoints", 10)
  per_layer = lambda tree: jax.tree_util.tree_leaves_with_path(tree["layers"])
  for (path, g), (_, t) in zip(per_layer(grown.params), per_layer(trained.params)):
    for layer in range(4):
      assert np.any(g[layer] != t[layer]), (jax.tree_util.keystr(path), layer)
  # Every Adam moment of every layer is live (nothing left out of the optimizer).
  assert _adam(trained)
  for s in _adam(trained):
    for moment in (s.mu, s.nu):
      for path, x in jax.tree_util.tree_leaves_with_path(moment["layers"]):
        assert all(np.any(x[i] != 0) for i in range(4)), jax.tree_util.keystr(path)
  # Each growth handed the Adam state over by its own event's rule: growth 1 (reset)
  # zero moments, growth 2 (grow) G_stack's copies of stage 1's (layer i from i % 2).
  grown_1, meta_1 = _state(stages.stage_config(cfg, events, 1), f"{ref_dir}/grown_1", 2)
  assert meta_1["grown_from"]["opt_state"] == "reset"
  assert all(not np.any(x) for s in _adam(grown_1) for x in jax.tree.leaves((s.mu, s.nu)))
  stage_1, _ = _state(stages.stage_config(cfg, events, 1), f"{ref_dir}/stage_1/checkpoints",
                      4)
  for src, dst in zip(_adam(stage_1), _adam(grown)):
    for a, b in zip(jax.tree.leaves((src.mu["layers"], src.nu["layers"])),
                    jax.tree.leaves((dst.mu["layers"], dst.nu["layers"]))):
      assert np.any(a) and all(np.array_equal(b[i], a[i % 2]) for i in range(4))


def _adam(state):
  """The Adam states (mu, nu) in a train state's optimizer state."""
  return [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")]


def test_flops_and_lr_run_on_across_stages(straight):
  ref_dir, _ = straight
  cfg = gradual_config()
  events = stages.schedule(cfg)
  files = speedup.metrics_files(ref_dir)
  assert [os.path.basename(os.path.dirname(f)) for f in files] == list(STAGES)
  flops, lr, expected, total = {}, {}, {}, 0.0
  for i, path in enumerate(files):
    model = ModelConfig.from_config(stages.stage_model(cfg, events, i))
    per_step = 8 * 32 * model.flops_per_token(32)
    with open(path) as f:
      for record in map(json.loads, f):
        flops[record["step"]], lr[record["step"]] = record["flops"], record["lr"]
    for step in range(events[i - 1].step + 1 if i else 1,
                      events[i].step + 1 if i < 2 else 11):
      total += per_step
      expected[step] = total
  assert flops.keys() == expected.keys()
  np.testing.assert_allclose([flops[s] for s in sorted(flops)],
                             [expected[s] for s in sorted(expected)], rtol=1e-12)
  # One LR schedule over the whole run (warmup 2, cosine to step 10), whatever the stage.
  schedule = opt_lib.make_schedule(cfg.optimizer, cfg.train.steps)
  np.testing.assert_allclose([lr[s] for s in range(1, 11)],
                             [float(schedule(s - 1)) for s in range(1, 11)], rtol=1e-6)
  speedup.check_counts_small_stage(ref_dir)           # growjax speedup accepts the run
  assert speedup._final_model(ref_dir)["num_layers"] == 4


@pytest.mark.parametrize("events,match", [
    ("4@2,2@4", "layer counts 1 -> 4 -> 2"),
    ("2@4,4@2", "growth steps 4, 2 must increase"),
    ("2@2,4@10", "growth steps 2, 10 must increase"),
    ("2@2,3@4", "config.model.num_layers=4"),
    ("2@2;4@4", "is not an event"),
    ("2@2:nosuch,4@4", "event '2@2:nosuch'"),
    ("2@2,4@4::keep", "event '4@4::keep'"),
    ("2@2,4@4 --config.growth.mask_ramp_steps=3", "mask_ramp_steps=3 is longer"),
])
def test_bad_schedules_refused_in_one_line(events, match, tmp_path, capsys):
  events, *more = events.split(" ")
  config_path = tmp_path / "gradual.py"
  config_path.write_text(
      "import importlib.util\n"
      f"_s = importlib.util.spec_from_file_location('t', {__file__!r})\n"
      "_t = importlib.util.module_from_spec(_s)\n_s.loader.exec_module(_t)\n"
      "def get_config(arg=None):\n  return _t.gradual_config()\n")
  workdir = tmp_path / "run"
  assert cli.main(["growjax", "train", f"--config={config_path}", f"--workdir={workdir}",
                   f"--config.growth.events={events}"] + more) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax train: config.growth."), err
  assert match in err and len(err.splitlines()) == 1, err
  assert not any(p.is_dir() for p in workdir.iterdir()) if workdir.exists() else True


def test_gradual_recipe():
  import importlib.util
  spec = importlib.util.spec_from_file_location("grow", os.path.join(ROOT, "configs",
                                                                     "grow.py"))
  grow = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(grow)
  cfg = grow.get_config("recipe=gradual")
  events = stages.check_schedule(cfg)
  assert [(e.step, e.num_layers) for e in events] == [(75, 4), (150, 8)]
  assert (cfg.growth.small_model.num_layers, cfg.model.num_layers) == (2, 8)
