"""Growing a checkpoint reads no training data: `growjax grow` works on a machine where the
large config's corpus is absent (only `learn`, which trains its expansion, needs it)."""

import os

from growjax import checkpoint as ckpt_lib
from growjax import cli
from growjax import train
from growjax.growth import stages
from tiny import grow_config

LARGE = """from tiny import tiny_base
def get_config(arg=None):
  c = tiny_base(num_layers=4)
  c.data.name = 'text_files'                        # a corpus this machine does not have
  c.data.train_files = '/no/such/corpus/train/*.txt'
  c.data.validation_files = '/no/such/corpus/valid/*.txt'
  c.data.tokenizer = 'spm:/no/such/tokenizer.model'
  return c
"""


def test_grow_needs_no_corpus(tmp_path, data_dir, capsys):
  cfg = stages.small_stage_config(grow_config())
  cfg.train.steps = 1
  train.train(cfg, str(tmp_path / "small"))
  (tmp_path / "large.py").write_text(LARGE)
  out = tmp_path / "grown"
  code = cli.main(["growjax", "grow", f"--from={tmp_path / 'small'}", f"--to={out}",
                   f"--config={tmp_path / 'large.py'}", "--method=stack", "--g=2"])
  assert code == 0, capsys.readouterr().err
  assert ckpt_lib.latest_complete_step(str(out)) == 1
  assert not os.path.exists("/no/such/corpus")
  # Training from it does need the corpus, and says so in one line before any compute.
  capsys.readouterr()  # what the small run and the grow printed
  code = cli.main(["growjax", "train", f"--config={tmp_path / 'large.py'}",
                   f"--workdir={tmp_path / 'large'}", f"--config.train.init_from={out}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith("growjax train: config.data.train_files=")
  assert len(err.splitlines()) == 1
