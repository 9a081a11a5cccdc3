"""Grow runs end to end: small -> grow -> large with resume in every stage, and
offline growth of a checkpoint onto another mesh (`growjax grow`)."""

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.growth import offline
from growjax.growth import stages
from growjax.train import state as state_lib
from growjax import train
from tiny import grow_config, train_small_stage


def test_grow_run_resumes_in_every_stage_with_identical_losses(tmp_path, data_dir):
  cfg = grow_config()
  straight = stages.run(cfg, str(tmp_path / "a"))
  assert sorted(straight["small"]["loss"]) == [1, 2, 3, 4]
  assert sorted(straight["large"]["loss"]) == [5, 6, 7, 8, 9, 10]
  # G_stack hands over close to where the small model was.
  last_small, first_large = straight["small"]["loss"][4], straight["large"]["loss"][5]
  assert abs(first_large - last_small) < 0.05 * last_small

  b = str(tmp_path / "b")
  first = stages.run(cfg, b, stop_after_steps=3)            # killed in the small stage
  assert first["small"]["stopped_at"] == 3 and "large" not in first
  second = stages.run(cfg, b, stop_after_steps=4)           # small done, grown, killed in large
  assert second["large"]["stopped_at"] == 8
  third = stages.run(cfg, b)                                # the rest of the large stage
  assert "small" not in third
  small = {**first["small"]["loss"], **second["small"]["loss"]}
  large = {**second["large"]["loss"], **third["large"]["loss"]}
  assert small == straight["small"]["loss"]
  assert large == straight["large"]["loss"]


def test_offline_growth_onto_another_mesh(tmp_path, data_dir):
  cfg = grow_config()
  small_cfg = stages.small_stage_config(cfg)
  small_cfg.mesh.data, small_cfg.mesh.fsdp, small_cfg.mesh.tensor = 2, 2, 2  # 8 devices
  small_cfg.train.steps = 2
  train.train(small_cfg, str(tmp_path / "small"))
  src_setup = state_lib.build(small_cfg)
  src_state, _, _ = ckpt_lib.Checkpoints(str(tmp_path / "small/checkpoints")).restore(
      2, src_setup.abstract_state)

  large_cfg = stages.large_stage_config(cfg, "")
  large_cfg.mesh.data, large_cfg.mesh.fsdp, large_cfg.mesh.tensor = 1, 4, 2  # another shape
  report = offline.grow_checkpoint(str(tmp_path / "small"), str(tmp_path / "grown"),
                                           large_cfg, method="stack", g=2)
  assert report["step"] == 2
  large = state_lib.build(large_cfg)
  grown, _, meta = ckpt_lib.Checkpoints(str(tmp_path / "grown")).restore(2, large.abstract_state)
  assert meta["grown_from"]["method"] == "stack"
  assert grown.params["layers"]["attn"]["q"].sharding.mesh.shape == large.mesh.shape
  small_layers = jax.device_get(src_state.params["layers"])
  big_layers = jax.device_get(grown.params["layers"])
  for i in range(4):  # G_stack: large layer i is small layer i % 2
    jax.tree.map(lambda s, b: np.testing.assert_array_equal(b[i], s[i % 2]), small_layers,
                 big_layers)
  # The grown checkpoint starts a large run at the small model's step.
  large_cfg.train.init_from = str(tmp_path / "grown")
  large_cfg.train.steps = 4
  hist = train.train(large_cfg, str(tmp_path / "large"))
  assert sorted(hist["loss"]) == [3, 4]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_dir):
  """A 1-step run of the small stage: the source the refusals below read (trained once)."""
  src = tmp_path_factory.mktemp("small")
  train_small_stage(src)
  return src


@pytest.mark.parametrize("argv,match", [
    (["--from=/no/such/dir", "--to=/tmp/x"], "--from"),
    (["--layer_map=0,1,2,5", "--method=direct"], "layer_map"),
    (["--g=3"], "--g=3"),
])
def test_grow_command_refuses_bad_input(argv, match, tmp_path, data_dir, request, capsys):
  if not any("--from" in a for a in argv):
    src = request.getfixturevalue("small_run")
    argv = [f"--from={src}", f"--to={tmp_path / 'out'}"] + argv
  config_path = str(tmp_path / "large.py")
  with open(config_path, "w") as f:
    f.write("from tiny import tiny_base\n"
            "def get_config(arg=None):\n"
            "  return tiny_base(num_layers=4)\n")
  assert cli.main(["growjax", "grow", f"--config={config_path}"] + argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax grow: ") and match in err and len(err.splitlines()) == 1
