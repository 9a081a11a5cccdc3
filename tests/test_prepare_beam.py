"""The Beam builder (tfds's own Beam support) on Beam's DirectRunner: the same windows,
in the same order, as `growjax prepare-data` writes, read back through
`shards.open_shards` from tfds's ArrayRecord layout.

apache-beam is the `beam` extra, not `test`: apache-beam 2.77 pins protobuf, pyarrow and
pillow below this environment's, so installing it here would downgrade them. Where it is
not importable, this test installs it (from the package registry, like `pip install
-e .[test]`) into a directory of its own, ~/.cache/growjax-tests/beamsite-<version> (or
$GROWJAX_BEAM_SITE), once, and runs itself in a child process with that directory first
on PYTHONPATH; the environment the other tests use is never touched. It skips only when
that install fails (no registry), saying why.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

import pip_site

from growjax.data import config as data_config
from growjax.data import prepare, shards

SEQ = 16
BEAM_PIN = "apache-beam==2.77.0"
HAVE_BEAM = importlib.util.find_spec("apache_beam") is not None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _beam_site() -> str:
  return pip_site.private_site(BEAM_PIN, "beamsite-" + BEAM_PIN.split("==")[1],
                               "GROWJAX_BEAM_SITE")


def test_beam_builder_writes_the_windows_prepare_writes(tmp_path):
  if HAVE_BEAM:
    _check_beam_build(tmp_path)
    return
  site = _beam_site()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [site, REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  test_id = f"{os.path.abspath(__file__)}::test_beam_builder_writes_the_windows_prepare_writes"
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:xdist", test_id], env=env, capture_output=True, text=True,
                       cwd=REPO, timeout=600)
  assert out.returncode == 0 and "1 passed" in out.stdout, (out.stdout + out.stderr)[-4000:]


def _check_beam_build(tmp_path):
  from growjax.data import beam_prepare  # noqa: PLC0415  (imports apache_beam)

  src = tmp_path / "src"
  src.mkdir()
  rng = np.random.default_rng(0)
  words = "alpha beta gamma delta epsilon zeta eta theta".split()
  for f in range(3):
    with open(src / f"part-{f}.jsonl", "w") as out:
      for i in range(40):
        out.write(json.dumps({"text": f"{f}.{i} " + " ".join(
            rng.choice(words, rng.integers(1, 12)))}) + "\n")
  (src / "notes.md").write_text("# a markdown document\nwith two lines\n")
  (tmp_path / "valid").mkdir()
  (tmp_path / "valid" / "v.jsonl").write_text("".join(
      json.dumps({"text": f"held out {i} " * 3}) + "\n" for i in range(20)))
  cfg = data_config.default_data_config()
  cfg.name, cfg.seq_len = "text_files", SEQ
  cfg.train_files, cfg.validation_files = f"{src}/*", f"{tmp_path}/valid/*"

  local = prepare.prepare(cfg, str(tmp_path / "local"), shard_windows=25, unit_bytes=700,
                          log=lambda _: None)
  built = beam_prepare.build(cfg, str(tmp_path / "tfds"), unit_bytes=700)

  index = shards.read_index(built)
  assert index["layout"] == "tfds" and index["seq_len"] == SEQ
  assert index["tokenizer"] == local["tokenizer"] and index["dtype"] == local["dtype"]
  for split in ("train", "validation"):
    assert index["splits"][split]["windows"] == local["splits"][split]["windows"]
    want = shards.open_shards(tmp_path / "local", split)
    got = shards.open_shards(built, split)
    assert len(got) == len(want) > 0
    ids = list(range(len(want)))
    assert got.__getitems__(ids) == want.__getitems__(ids)

  # The trainer reads the Beam build like a prepare-data output: the same batches.
  from growjax.data import loader  # noqa: PLC0415
  batches = []
  for path in (tmp_path / "local", built):
    c = data_config.default_data_config()
    c.prepared_dir, c.seq_len = str(path), SEQ
    it = loader.train_iterator(c, global_batch_size=4, seed=0)
    batches.append([next(it) for _ in range(3)])
  for a, b in zip(*batches):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
