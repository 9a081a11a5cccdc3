"""The replica's larger point (configs/repro/larger.py) and the replica's seed / g args:
~4x the parameters and FLOPs of configs/repro/replica.py, scratch and stack at equal
FLOPs, the committed BPE tokenizer matching the model's vocabulary, the pycorpus
variable's errors through the console, and benchmarks/make_pycorpus.py on a fake
site-packages (licences, duplicates, held-out packages, MANIFEST)."""

import importlib.util
import os
import subprocess
import sys
import tarfile

import pytest

from growjax import cli
from growjax.data import corpora
from growjax.data.tokenizers import make_tokenizer
from growjax.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_STEP = 64 * 1024


@pytest.fixture(autouse=True)
def _pycorpus(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  for split in ("train", "validation"):
    (tmp_path / "pyc" / split).mkdir(parents=True)
  monkeypatch.setenv(corpora.PYCORPUS_ENV, str(tmp_path / "pyc"))
  return tmp_path / "pyc"


def load(spec: str):
  return cli.parse(cli.COMMANDS["train"], [f"--config={spec}"]).config


def run_flops(cfg) -> float:
  """The run's training FLOPs: the small stage's steps at its model, the rest at the large."""
  seq = cfg.data.seq_len
  large = ModelConfig.from_config(cfg.model).flops_per_token(seq)
  if not cfg.growth.enabled:
    return cfg.train.steps * TOKENS_PER_STEP * large
  small = ModelConfig.from_config(cfg.growth.small_model).flops_per_token(seq)
  k = cfg.growth.small_steps
  return (k * small + (cfg.train.steps - k) * large) * TOKENS_PER_STEP


def test_larger_is_about_4x_the_replica_in_params_and_flops_at_equal_flops():
  rep, big = load("configs/repro/replica.py:run=scratch"), load(
      "configs/repro/larger.py:run=scratch")
  stack = load("configs/repro/larger.py:run=stack")
  n_rep = ModelConfig.from_config(rep.model).num_params()
  n_big = ModelConfig.from_config(big.model).num_params()
  assert (n_rep, n_big) == (54_936_064, 234_914_816)          # 4.28x
  assert run_flops(big) / run_flops(rep) == pytest.approx(4.04, abs=0.01)
  assert (big.train.steps, stack.growth.small_steps, stack.train.steps) == (1000, 333, 1241)
  # Equal FLOPs: the stack run spends the scratch run's to within one large step.
  one_step = run_flops(big) / big.train.steps
  assert 0 <= run_flops(big) - run_flops(stack) < one_step
  assert stack.growth.small_model.num_layers == 4 and stack.growth.method == "stack"
  # Scratch and stack differ only by the growth.
  assert big.optimizer.to_dict() == stack.optimizer.to_dict()
  assert big.optimizer.peak_lr == 5e-4 and big.optimizer.warmup_steps == 100
  assert big.data.to_dict() == stack.data.to_dict() and big.model.to_dict() == stack.model.to_dict()
  assert big.model.remat_policy == "dots" and big.data.prepare_workers >= 1


def test_the_committed_tokenizer_has_the_models_vocabulary(_pycorpus):
  cfg = load("configs/repro/larger.py:run=scratch")
  tok = make_tokenizer(cfg.data.tokenizer)
  assert tok.vocab_size == cfg.model.vocab_size == 8192
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  ids = tok.encode("def f(x):\n    return x + 1\n")
  assert tok.decode(ids) == "def f(x):\n    return x + 1\n" and len(ids) < 15
  assert cfg.data.name == "text_files"
  assert cfg.data.train_files == os.path.join(str(_pycorpus), "train", "**", "*.py")
  assert cfg.data.validation_files == os.path.join(str(_pycorpus), "validation", "**", "*.py")


def test_replica_seed_and_g_args():
  c = load("configs/repro/replica.py:run=stack,g=2,seed=2")
  assert c.seed == 2 and c.growth.small_model.num_layers == 8 and c.growth.small_steps == 300
  # 300 steps of the 8L model (0.501 of the 16L model's FLOPs per token) save 150.4 steps.
  assert c.train.steps == 300 + 749
  default = load("configs/repro/replica.py:run=stack")
  assert default.seed == 0 and default.growth.small_model.num_layers == 4
  assert default.train.steps == 300 + 824            # unchanged (docs/RESULTS.md)
  assert load("configs/repro/replica.py:run=scratch,seed=1").seed == 1
  assert load("configs/repro/larger.py:run=stack,seed=3").seed == 3


@pytest.mark.parametrize("spec,message", [
    ("configs/repro/replica.py:run=stack,g=3", "g=3 is not one of (2, 4)"),
    ("configs/repro/replica.py:run=scratch,g=2", "g are args of run=stack only"),
    ("configs/repro/larger.py:run=scratch,small_steps=10", "small_steps is an arg of run=stack"),
    ("configs/repro/larger.py:run=big", "run='big' is not one of scratch, stack"),
])
def test_bad_args_through_the_console(spec, message):
  with pytest.raises(cli.CommandError) as e:
    load(spec)
  assert message in str(e.value)


def test_a_missing_pycorpus_is_one_line_naming_the_variable_and_the_fix(monkeypatch, capsys,
                                                                         tmp_path):
  monkeypatch.delenv(corpora.PYCORPUS_ENV)
  monkeypatch.setattr(sys, "argv", ["growjax", "train", "--config",
                                    "configs/repro/larger.py:run=scratch",
                                    "--workdir", str(tmp_path / "w")])
  assert cli.main() == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax train: --config=configs/repro/larger.py:run=scratch: ")
  assert "$GROWJAX_PYCORPUS_DIR is not set" in err
  assert "benchmarks/make_pycorpus.py" in err and len(err.splitlines()) == 1
  monkeypatch.setenv(corpora.PYCORPUS_ENV, str(tmp_path))
  assert cli.main() == 2
  assert "has no train/ or validation/ folder" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def _dist(site, name, licence, files):
  info = site / f"{name}-1.0.dist-info"
  info.mkdir(parents=True)
  (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                 f"License-Expression: {licence}\n")
  record = []
  for rel, text in files.items():
    (site / rel).parent.mkdir(parents=True, exist_ok=True)
    (site / rel).write_text(text)
    record.append(f"{rel},,")
  (info / "RECORD").write_text("\n".join(record) + "\n")


def test_make_pycorpus_keeps_permissive_packages_once_and_holds_out_whole_packages(tmp_path):
  site, std = tmp_path / "site", tmp_path / "std"
  _dist(site, "okpkg", "MIT", {"okpkg/a.py": "a = 1\n", "okpkg/dup.py": "x = 'same'\n",
                               "okpkg/empty.py": "", "okpkg/data.txt": "not code"})
  _dist(site, "lgplpkg", "LGPL-2.1-or-later", {"lgplpkg/b.py": "b = 2\n"})
  _dist(site, "optax", "Apache-2.0", {"optax/o.py": "o = 3\n", "optax/dup.py": "x = 'same'\n"})
  for rel, text in {"os.py": "import sys\n", "email/m.py": "m = 4\n",
                    "site-packages/z.py": "z = 5\n"}.items():
    (std / rel).parent.mkdir(parents=True, exist_ok=True)
    (std / rel).write_text(text)
  out, manifest = tmp_path / "pyc.tar.xz", tmp_path / "MANIFEST.tsv"
  done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "make_pycorpus.py"),
                         "--site_packages", str(site), "--stdlib", str(std), "--out", str(out),
                         "--manifest", str(manifest)], capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 0, done.stderr
  with tarfile.open(out) as tar:
    names = tar.getnames()
    assert tar.extractfile("pycorpus/MANIFEST.tsv").read().decode() == manifest.read_text()
  # The duplicate is kept once, in validation (held-out optax), never also in train.
  assert names == ["pycorpus/MANIFEST.tsv", "pycorpus/train/okpkg/okpkg/a.py",
                   "pycorpus/train/stdlib/os.py", "pycorpus/validation/optax/optax/dup.py",
                   "pycorpus/validation/optax/optax/o.py",
                   "pycorpus/validation/stdlib/email/m.py"]
  rows = [line.split("\t") for line in manifest.read_text().splitlines()
          if not line.startswith("#")]
  assert ["train", "okpkg", "1.0", "MIT", "1", "6", "1", "1"] in rows
  assert ["excluded", "lgplpkg", "1.0", "LGPL-2.1-or-later", "copyleft licence", "1", "6"] in rows
  # Byte-identical for the same inputs.
  first = out.read_bytes()
  subprocess.run(done.args, check=True, capture_output=True, timeout=60)
  assert out.read_bytes() == first


def test_prepare_workers_below_one_is_refused_naming_the_field():
  from growjax.data import config as data_config
  cfg = load("configs/repro/larger.py:run=scratch")
  cfg.data.prepare_workers = 0
  with pytest.raises(ValueError, match=r"config.data.prepare_workers must be >= 1, got 0"):
    data_config.check_data_config(cfg.data)
