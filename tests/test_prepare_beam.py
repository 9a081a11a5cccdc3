"""The Beam builder (tfds's own Beam support) on Beam's DirectRunner: the same windows,
in the same order, as `growjax prepare-data` writes, read back through
`shards.open_shards` from tfds's ArrayRecord layout.

Needs apache-beam (the `beam` extra; not in `test`: apache-beam 2.77 pins protobuf, pyarrow
and pillow below this environment's). With it installed elsewhere, e.g.
`pip install --target /tmp/beamsite apache-beam`, run
`PYTHONPATH=/tmp/beamsite pytest tests/test_prepare_beam.py`."""

import json

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam", reason="apache-beam is not installed (the "
                           "`beam` extra); see this file's docstring")

from growjax.data import beam_prepare, prepare, shards  # noqa: E402
from growjax.data import config as data_config  # noqa: E402

SEQ = 16


def test_beam_builder_writes_the_windows_prepare_writes(tmp_path):
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
