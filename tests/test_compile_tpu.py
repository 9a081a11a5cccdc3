"""`growjax compile`: a run's programs compiled by the real TPU compiler (libtpu) for a
TPU slice on this CPU host: the Mosaic splash kernels in the compiled HLO, memory per
chip within HBM, a grow run's stages and growth, the compiler's own out-of-memory line
for the 7B shape on v5e-8, and two slices.

libtpu is the `tpu` extra, not `test`: where it is not importable, this module installs
it (from the package registry, like `pip install -e .[tpu]`) into a directory of its own,
~/.cache/growjax-tests/libtpu-<version> (or $GROWJAX_LIBTPU_SITE), once, and runs its
libtpu tests in one child process with that directory first on PYTHONPATH (one libtpu
process for the module); the environment the other tests use is never touched. They
skip only when that install fails (no registry), saying why. The topology checks that
need no compiler run here either way.
"""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

import pip_site

from growjax import cli
from growjax import config as config_lib
from growjax.model import ModelConfig
from growjax.train import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
LIBTPU_PIN = next((r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("jax")
                   if r.startswith("libtpu") and 'extra == "tpu"' in r), "libtpu")
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason="runs in the child process of "
                                  "test_libtpu_tests_in_a_child_with_libtpu_installed")
GIB = 2 ** 30


def _libtpu_site() -> str:
  return pip_site.private_site(LIBTPU_PIN, "libtpu-" + jax.__version__, "GROWJAX_LIBTPU_SITE",
                               no_deps=True)


@pytest.mark.slow
@pytest.mark.skipif(HAVE_LIBTPU, reason="libtpu is importable: the tests run in this process")
def test_libtpu_tests_in_a_child_with_libtpu_installed():
  site = _libtpu_site()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [site, REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:xdist", os.path.abspath(__file__)], env=env,
                       capture_output=True, text=True, cwd=REPO, timeout=900)
  last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
  # skipped there: this test and the one that needs libtpu absent
  assert out.returncode == 0 and " passed, 2 skipped" in last, (out.stdout + out.stderr)[-4000:]


# ----------------------------------------------------------- no compiler needed


def test_slice_names_become_libtpu_topologies():
  shapes = {n: aot.parse_topology(n).topology_name for n in
            ("v5e-8", "v5litepod-16", "v5e-256", "v5p-8", "v5p-16", "v5p-64", "v5p-256",
             "v5p-512", "v6e-8", "v6e-256", "v4-32")}
  assert shapes == {"v5e-8": "v5e:2x4", "v5litepod-16": "v5e:4x4", "v5e-256": "v5e:16x16",
                    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-64": "v5p:2x4x4",
                    "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8", "v6e-8": "v6e:2x4",
                    "v6e-256": "v6e:16x16", "v4-32": "v4:2x2x4"}
  topo = aot.parse_topology("v5p-256", slices=2)
  assert (topo.chips, topo.num_chips, topo.hbm_bytes) == (128, 256, 95 * GIB)


def test_config_mesh_is_one_slice_and_data_spans_the_slices():
  from growjax import sharding
  mesh = {"data": 1, "fsdp": -1, "tensor": 2}
  assert sharding.mesh_shape(mesh, 32, slices=2) == {"data": 2, "fsdp": 8, "expert": 1,
                                                     "tensor": 2}
  assert sharding.mesh_shape(mesh, 32) == {"data": 1, "fsdp": 16, "expert": 1, "tensor": 2}
  with pytest.raises(ValueError, match="30 devices do not split into 4 equal slices"):
    sharding.mesh_shape(mesh, 30, slices=4)


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.parametrize("topology, message", [
    ("v5x-8", "growjax compile: --topology='v5x-8' is not a TPU slice name — give v4-N, "
              "v5e-N (v5litepod-N), v5p-N or v6e-N, as Cloud TPU names them, e.g. "
              "--topology=v5e-8"),
    ("v5p-2", "growjax compile: --topology='v5p-2': v5p slices hold a power of two of chips "
              "(2 TensorCores per chip, at least 4 chips) — e.g. --topology=v5p-16"),
    ("v5e-12", "growjax compile: --topology='v5e-12': v5e slices hold a power of two of "
               "chips (at least 1 chip) — e.g. --topology=v5e-2"),
])
def test_a_bad_topology_is_one_line_before_any_compile(topology, message, monkeypatch,
                                                       capsys):
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={REPO}/configs/tiny.py",
                       f"--topology={topology}")
  assert code == 2 and err.strip() == message and not out


# --------------------------------------------------------------- with libtpu


def write_config(tmp_path, body: str) -> str:
  path = tmp_path / "c.py"
  path.write_text("from tiny import grow_config, tiny_base\n"
                  "def get_config(arg=None):\n" + body)
  return str(path)


@needs_libtpu
def test_tiny_run_compiles_for_v5e_8_with_splash_kernels_within_hbm(monkeypatch, capsys):
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={REPO}/configs/tiny.py",
                       "--topology=v5e-8", "--json")
  assert code == 0, err
  report = json.loads(out)
  assert (report["chips"], report["device_kind"], report["topology_name"]) == (
      8, "TPU v5 lite", "v5e:2x4")
  train, evaluate = report["programs"]
  assert (train["name"], evaluate["name"]) == ("train step", "eval step")
  params = ModelConfig.from_config(config_lib.base_config("tiny").model).num_params()
  assert train["params"] == params * 4 // 8        # float32, fsdp over 8 chips
  assert train["opt_state"] >= 2 * train["params"]  # Adam's two moments
  # splash forward + its two backward kernels; the eval step: the forward alone
  assert (train["mosaic_calls"], evaluate["mosaic_calls"]) == (3, 1)
  for p in (train, evaluate):
    assert p["fits"] and 0 < p["total"] < p["hbm"] == 16 * GIB and p["temporaries"] > 0


@pytest.mark.slow
@needs_libtpu
def test_scanned_1b_step_fits_v5e_8_with_splash():
  """configs/llama.py:size=1b at 2 x 2048 per chip: the compiler's own plan (CPU-host AOT:
  6.84 GiB per chip when measured), with the pod's splash kernels (4 calls: the forward
  again under remat 'dots')."""
  cfg = _llama("1b", per_chip=2, chips=8)
  topo = aot.parse_topology("v5e-8")
  prog = aot.compile_train_step(aot.build(cfg, topo), topo.hbm_bytes)
  assert prog.fits and prog.mosaic_calls == 4
  assert prog.params == ModelConfig.from_config(cfg.model).num_params() * 4 // 8
  assert 4 * GIB < prog.total < 16 * GIB


def _llama(size, per_chip, chips):
  import importlib.util as iu
  spec = iu.spec_from_file_location("llama_cfg", os.path.join(REPO, "configs", "llama.py"))
  module = iu.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(f"size={size}")
  cfg.train.global_batch_size = per_chip * chips
  return cfg


@pytest.mark.slow
@needs_libtpu
def test_7b_on_v5e_8_fails_in_one_line_naming_temporaries_and_hbm(tmp_path, monkeypatch,
                                                                   capsys):
  path = tmp_path / "seven.py"
  path.write_text("import importlib.util, os\n"
                  f"spec = importlib.util.spec_from_file_location('l', {REPO!r} + "
                  "'/configs/llama.py')\n"
                  "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                  "def get_config(arg=None):\n"
                  "  c = m.get_config('size=7b')\n"
                  "  c.train.global_batch_size = 8\n"
                  "  return c\n")
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={path}",
                       "--topology=v5e-8")
  line = err.strip()
  assert code == 1 and "\n" not in line, err
  assert line.startswith("growjax compile: train step does not fit v5e-8: Ran out of memory "
                         "on HBM"), line
  assert "HLO temporaries" in line and "available HBM (15.75G)" in line
  assert line.endswith("--estimate finds what fits")
  assert "does not fit: Ran out of memory" in out   # the table's row says so too


@needs_libtpu
def test_grow_run_compiles_each_stage_and_the_growth(tmp_path, monkeypatch, capsys):
  path = write_config(tmp_path, "  c = grow_config()\n  c.data.seq_len = 128\n  return c\n")
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={path}",
                       "--topology=v5e-8", "--json")
  assert code == 0, err
  progs = {p["name"]: p for p in json.loads(out)["programs"]}
  assert list(progs) == ["small train step", "small eval step", "growth 1",
                         "large train step", "large eval step"]
  assert progs["growth 1"]["what"] == "2L x 128 -> 4L x 128 by stack, opt_state reset"
  small = ModelConfig.from_config(config_lib.model_config("tiny", num_layers=2)).num_params()
  large = ModelConfig.from_config(config_lib.model_config("tiny", num_layers=4)).num_params()
  # the small stage on its 4 x 2 mesh: params sharded over fsdp=2; the large on 2 x 4
  assert progs["small train step"]["params"] == small * 4 // 2
  assert progs["large train step"]["params"] == large * 4 // 4
  assert progs["growth 1"]["params"] == large * 4 // 4   # it makes the large state
  assert all(p["fits"] and p["total"] > 0 for p in progs.values())


@needs_libtpu
def test_two_slices_put_the_data_axis_across_slices(monkeypatch, capsys):
  cfg = config_lib.base_config("tiny")
  cfg.data.seq_len = 128
  cfg.train.global_batch_size = 32
  topo = aot.parse_topology("v5e-8", slices=2)
  setup = aot.build(cfg, topo)
  assert dict(setup.mesh.shape) == {"data": 2, "fsdp": 8, "expert": 1, "tensor": 1}
  slice_of = [[d.slice_index for d in row.flat] for row in setup.mesh.devices]   # by data
  assert slice_of == [[0] * 8, [1] * 8]   # each data row is one slice: only data over DCN
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={REPO}/configs/tiny.py",
                       "--topology=v5e-8", "--slices=2", "--json")
  assert code == 0, err
  report = json.loads(out)
  assert (report["chips"], report["slices"]) == (16, 2)
  assert all(p["fits"] and p["mosaic_calls"] for p in report["programs"])


@pytest.mark.skipif(HAVE_LIBTPU, reason="libtpu is installed here")
def test_without_libtpu_one_line_says_how_to_get_it(monkeypatch, capsys):
  code, out, err = run(monkeypatch, capsys, "compile", f"--config={REPO}/configs/tiny.py",
                       "--topology=v5e-8")
  assert code == 2 and not out
  assert err.strip() == (
      "growjax compile: libtpu is not installed, and the TPU compiler comes with it — pip "
      f"install 'growjax[tpu]' (or 'jax[tpu]=={jax.__version__}') on this host; no TPU is "
      "needed")


@needs_libtpu
def test_estimate_searches_the_batch_from_the_cheapest_remat_policy():
  """Doubling from 1 per chip under remat 'none' (it fits up to the cap here, so no
  costlier policy is tried), printed as the overrides to use."""
  cfg = config_lib.base_config("tiny")
  cfg.data.seq_len = 128
  topo = aot.parse_topology("v5e-8")
  lines = []
  got = aot.estimate(cfg, topo, log=lines.append, max_per_chip=2)
  assert lines[0].startswith("remat none, 1 per chip: fits")
  assert [l.split(":")[0] for l in lines] == [f"remat none, {n} per chip" for n in (1, 2)]
  assert {k: got[k] for k in ("fits", "remat_policy", "per_chip", "global_batch_size",
                              "compiles", "overrides")} == {
      "fits": True, "remat_policy": "none", "per_chip": 2, "global_batch_size": 16,
      "compiles": 2, "overrides": ["--config.model.remat_policy=none",
                                   "--config.train.global_batch_size=16"]}


@needs_libtpu
def test_bound_counts_every_layer_and_refuses_where_kernels_hide_flops():
  """The layer loop's trip count applied (the 1- and 2-layer unrolled steps); with
  splash, whose Mosaic calls the cost model counts as no FLOPs, no bound is claimed."""
  cfg = config_lib.base_config("tiny")
  cfg.data.seq_len, cfg.model.attention_impl = 128, "xla"
  topo = aot.parse_topology("v5e-8")
  b = aot.bound(cfg, topo)
  assert b["valid"] and b["kind"] in ("optimal_seconds", "flops at peak")
  tokens = cfg.train.global_batch_size * cfg.data.seq_len
  assert b["tokens_per_s_per_chip"] == pytest.approx(tokens / 8 / b["step_s"])
  model = ModelConfig.from_config(cfg.model)
  assert b["mfu"] == pytest.approx(model.flops_per_token(128) * b["tokens_per_s_per_chip"]
                                   / 197e12)
  # the compiler counts at least the model's matmul FLOPs (remat none: no recompute)
  assert b["flops_per_chip"] >= 0.9 * model.flops_per_token(128) * tokens / 8
  cfg.model.attention_impl = "splash"
  b = aot.bound(cfg, topo)
  assert not b["valid"] and "Mosaic kernel calls (splash attention)" in b["why"]
