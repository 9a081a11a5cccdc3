"""`growjax grow` and grow runs as a user drives them: every layer map the library takes
is reachable from `--layer_map` and `config.growth.layer_map`, refusals come before any
compute, and an inexact growth is refused unless allowed, then measured and printed."""

import re

import jax
import numpy as np
import pytest

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax.train import state as state_lib
from growjax.growth import offline, stages
from tiny import grow_config, tiny_base, train_small_stage


def _large_config(layers: int, embed: int):
  c = tiny_base(num_layers=layers)
  c.model.embed_dim = embed
  return c


LARGE_FILE = """from test_growth_cli import _large_config
def get_config(arg=None):
  return _large_config({layers}, {embed})
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_dir):
  """A 2-layer x 128 tiny model trained one step: the source of every `growjax grow`."""
  workdir = tmp_path_factory.mktemp("small")
  small = state_lib.build(train_small_stage(workdir))
  params = ckpt_lib.Checkpoints(str(workdir / "checkpoints")).restore(
      1, small.abstract_state)[0].params
  return workdir, jax.device_get(params)


def _grow(tmp_path, small_run, *flags, layers=4, embed=128):
  config = tmp_path / "large.py"
  config.write_text(LARGE_FILE.format(layers=layers, embed=embed))
  out = tmp_path / "grown"
  code = cli.main(["growjax", "grow", f"--from={small_run[0]}", f"--to={out}",
                   f"--config={config}", *flags])
  return code, str(out)


def _grown_params(out: str, layers: int, embed: int = 128):
  large = state_lib.build(_large_config(layers, embed))
  state, _, meta = ckpt_lib.Checkpoints(out).restore(1, large.abstract_state)
  return jax.device_get(state.params), meta


def _assert_zero_layers_inserted(big, small, old, new):
  for name in ("q", "k", "v", "o"):
    np.testing.assert_array_equal(big["layers"]["attn"][name][old], small["layers"]["attn"][name])
  assert not np.any(big["layers"]["attn"]["o"][new])
  assert not np.any(big["layers"]["mlp"]["down"][new])


def test_grow_command_takes_a_map_with_new_layers(small_run, tmp_path, capsys):
  code, out = _grow(tmp_path, small_run, "--method=zero", "--layer_map=0,-1,1,-1")
  assert code == 0, capsys.readouterr().err
  big, meta = _grown_params(out, 4)
  assert meta["grown_from"]["layer_map"] == [0, -1, 1, -1]
  _assert_zero_layers_inserted(big, small_run[1], [0, 2], [1, 3])


def test_learn_with_grown_opt_state_is_refused_before_reading(small_run, tmp_path, capsys,
                                                               monkeypatch):
  monkeypatch.setattr(offline, "_restore", lambda *a: pytest.fail("read the checkpoint"))
  code, _ = _grow(tmp_path, small_run, "--method=learn", "--opt_state=grow")
  assert code == 2
  assert capsys.readouterr().err.strip() == (
      "growjax grow: --opt_state=grow cannot follow 'learn': its dense maps have no moment "
      "mapping — use --opt_state=reset")


def test_inexact_width_is_refused_unless_allowed_then_measured(small_run, tmp_path, capsys):
  code, _ = _grow(tmp_path, small_run, layers=2, embed=192)
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert err.endswith("set config.model.embed_dim to a multiple of 128 (e.g. 256), or pass "
                      "--allow_inexact to accept the change")
  code, out = _grow(tmp_path, small_run, "--allow_inexact", layers=2, embed=192)
  printed = capsys.readouterr().out
  assert code == 0
  moved = re.search(r"inexact growth: width direct from .*embed_dim=192 .* the logits moved "
                    r"by up to ([\d.]+)%", printed)
  assert moved and float(moved.group(1)) > 0.1, printed
  _, meta = _grown_params(out, 2, 192)
  assert meta["grown_from"]["logit_change"] == pytest.approx(float(moved.group(1)) / 100,
                                                             abs=1e-4)


def test_grow_run_takes_a_map_with_new_layers(tmp_path, data_dir):
  cfg = grow_config("zero")
  cfg.growth.layer_map = (0, -1, 1, -1)
  cfg.growth.small_steps, cfg.train.steps = 1, 2
  stages.run(cfg, str(tmp_path))
  small = state_lib.build(stages.small_stage_config(cfg))
  small_params = ckpt_lib.Checkpoints(str(tmp_path / "small/checkpoints")).restore(
      1, small.abstract_state)[0].params
  large = state_lib.build(stages.large_stage_config(cfg, ""))
  grown, _, meta = ckpt_lib.Checkpoints(str(tmp_path / "grown")).restore(1, large.abstract_state)
  assert meta["grown_from"]["layer_map"] == [0, -1, 1, -1]
  _assert_zero_layers_inserted(jax.device_get(grown.params), jax.device_get(small_params),
                               [0, 2], [1, 3])


def test_grow_run_refuses_its_growth_before_the_small_stage(tmp_path):
  cfg = grow_config("direct")
  cfg.growth.layer_map = (0, 1, 2, 5)
  with pytest.raises(ValueError, match=re.escape(
      "config.growth.layer_map=[0, 1, 2, 5]: entries [2, 5] point past the small model "
      "(config.growth.small_model.num_layers=2) — ")):
    stages.run(cfg, str(tmp_path))
  assert not (tmp_path / "small").exists()


def test_width_zero_into_an_unscaled_norm_eps_prints_the_measured_change(small_run, tmp_path,
                                                                         capsys):
  code, _ = _grow(tmp_path, small_run, "--width_method=zero", layers=2, embed=256)
  printed = capsys.readouterr().out
  assert code == 0
  assert re.search(r"inexact growth: width zero keeps the function exactly only with "
                   r"config.model.norm_eps=5e-06 .* the logits moved by up to [\d.]+% .* — set "
                   r"config.model.norm_eps=5e-06 to grow exactly", printed), printed
