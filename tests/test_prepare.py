"""`growjax prepare-data`: a corpus of .txt/.md, .jsonl, .jsonl.gz and .parquet files ->
sharded ArrayRecord + index.json. 2 workers write byte-identical shards to 1; every
document comes back exactly once, in order, from the windows; a preparation SIGKILLed
halfway and rerun writes only the missing shards; bad inputs are one line naming the file
and the fix, before anything is written; gs:// output through the local GCS emulator."""

import gzip
import json
import os
import subprocess
import sys

# Before gcsfs is first imported (tests/test_gcs.py's emulator fixture needs it off).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from growjax import cli  # noqa: E402
from growjax.data import config as data_config  # noqa: E402
from growjax.data import prepare, shards  # noqa: E402
from growjax.data.tokenizers import ByteTokenizer  # noqa: E402
from test_gcs import BUCKET, gcs  # noqa: E402,F401  (the emulator fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
SEQ = 32
WORDS = "the of and to in is was for on with as by at from his her they".split()


def _doc(rng, i):
  return f"d{i}: " + " ".join(rng.choice(WORDS, rng.integers(1, 60)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Files of every kind, and the documents they hold in source order (sorted paths)."""
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  docs, i = [], 0

  def take(n):
    nonlocal i
    out = [_doc(rng, i + k) for k in range(n)]
    i += n
    docs.extend(out)
    return out

  for name in ("a.md", "b.txt"):
    (root / name).write_text(take(1)[0])
  with open(root / "c.jsonl", "w") as f:
    for t in take(120):
      f.write(json.dumps({"id": 0, "text": t}) + "\n")
  with gzip.open(root / "d.jsonl.gz", "wt") as f:
    for t in take(40):
      f.write(json.dumps({"text": t}) + "\n")
  table = pa.table({"text": take(90), "n": list(range(90))})
  pq.write_table(table, root / "e.parquet", row_group_size=25)
  (root / "valid").mkdir()
  with open(root / "valid" / "v.jsonl", "w") as f:
    valid = [_doc(rng, 10_000 + k) for k in range(30)]
    f.write("".join(json.dumps({"text": t}) + "\n" for t in valid))
  return root, docs, valid


def _cfg(root, **kw):
  cfg = data_config.default_data_config()
  cfg.name, cfg.seq_len = "text_files", SEQ
  cfg.train_files = f"{root}/*.*"
  cfg.validation_files = f"{root}/valid/*.jsonl"
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _prep(cfg, out, workers=1, **kw):
  return prepare.prepare(cfg, str(out), workers=workers, shard_windows=40, unit_bytes=1500,
                         log=lambda _: None, **kw)


def _documents(directory, split):
  """The documents read back from a split's windows, in order (the stream re-joined:
  window i + 1 starts with window i's last token)."""
  src = shards.open_shards(str(directory), split)
  ws = [np.frombuffer(src[g], np.uint16).astype(np.int64) for g in range(len(src))]
  stream = np.concatenate([ws[0]] + [w[1:] for w in ws[1:]])
  tok, docs = ByteTokenizer(), []
  starts = np.flatnonzero(stream == tok.bos_id)
  for s, e in zip(starts, list(starts[1:]) + [len(stream)]):
    body = stream[s + 1:e]
    complete = len(body) and body[-1] == tok.eos_id
    docs.append((tok.decode(body[:-1] if complete else body), bool(complete)))
  return docs


def _check_exactly_once(got, want):
  """Every document once, in order; only the last may be cut (the dropped partial window)."""
  assert all(complete for _, complete in got[:-1])
  assert [t for t, _ in got[:-1]] == want[:len(got) - 1]
  assert want[len(got) - 1].startswith(got[-1][0])
  assert len(want) - len(got) <= 1 + SEQ // 3  # at most the tail of one window lost


def _files(directory):
  return {f: (directory / f).read_bytes() for f in sorted(os.listdir(directory))
          if f.endswith(".array_record")}


def test_two_workers_write_the_same_shards_as_one_and_every_document_once(corpus, tmp_path):
  root, docs, valid = corpus
  one = _prep(_cfg(root), tmp_path / "one", workers=1)
  two = _prep(_cfg(root), tmp_path / "two", workers=2)
  assert one == two
  assert _files(tmp_path / "one") == _files(tmp_path / "two")
  train = one["splits"]["train"]
  assert len(train["shards"]) > 3 and [s["windows"] for s in train["shards"][:-1]] == [40] * (
      len(train["shards"]) - 1)
  assert train["windows"] == sum(s["windows"] for s in train["shards"])
  assert one["tokenizer"] == {"spec": "byte", "kind": "byte", "identity": "byte",
                              "vocab_size": 259, "bos_id": 1, "eos_id": 2, "pad_id": 0,
                              "model_max_length": None, "files": [], "dir": None,
                              "encoding": ""}
  assert one["dtype"] == "uint16" and one["seq_len"] == SEQ
  assert [os.path.basename(s["path"]) for s in one["sources"]] == [
      "a.md", "b.txt", "c.jsonl", "d.jsonl.gz", "e.parquet", "v.jsonl"]
  _check_exactly_once(_documents(tmp_path / "one", "train"), docs)
  _check_exactly_once(_documents(tmp_path / "one", "validation"), valid)
  total = sum(len(d.encode()) + 2 for d in docs)  # BOS doc EOS
  assert train["windows"] == (total - 1) // SEQ
  assert train["documents"] == len(_documents(tmp_path / "one", "train"))
  shards.verify_shards(tmp_path / "one")
  # A finished output of the same config: nothing to do, nothing rewritten.
  before = {f: os.stat(tmp_path / "one" / f).st_mtime_ns for f in _files(tmp_path / "one")}
  assert _prep(_cfg(root), tmp_path / "one") == one
  assert before == {f: os.stat(tmp_path / "one" / f).st_mtime_ns for f in before}


def _console(*args, env=None):
  cmd = [sys.executable, "-m", "growjax", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                        cwd=REPO, timeout=120)


def _config_args(root, out, *extra, workers=2):
  return ["prepare-data", "--config", TINY, "--out", str(out), "--workers", str(workers),
          "--shard_mb", str(40 * (SEQ + 1) * 2 / 2**20),
          "--config.data.name=text_files", f"--config.data.train_files={root}/*.*",
          f"--config.data.validation_files={root}/valid/*.jsonl",
          f"--config.data.seq_len={SEQ}", *extra]


def test_killed_halfway_then_rerun_writes_only_the_missing_shards(corpus, tmp_path):
  root, docs, _ = corpus
  out = tmp_path / "out"
  killed = _console(*_config_args(root, out), env={"GROWJAX_FAULT": "mid_prepare:4"})
  assert killed.returncode == -9, killed.stderr
  assert not (out / "index.json").exists()
  kept = _files(out)
  assert sorted(kept) == [f"train-0000{i}.array_record" for i in range(3)]
  leftover = [f for f in os.listdir(out) if ".tmp" in f]  # the killed shard's temporary
  assert len(leftover) == 1 and leftover[0].startswith(".train-00003.array_record.")
  assert shards.is_stale_temporary(leftover[0])
  (out / ".train-00003.array_record.otherhost-1.abc.tmp").write_text("")  # not ours to judge
  stamps = {f: os.stat(out / f).st_mtime_ns for f in kept}
  done = _console(*_config_args(root, out, workers=1))  # shards do not depend on workers
  assert done.returncode == 0, done.stderr
  assert "resuming" in done.stderr
  assert {f: os.stat(out / f).st_mtime_ns for f in kept} == stamps  # not rewritten
  assert [f for f in os.listdir(out) if ".tmp" in f] == [
      ".train-00003.array_record.otherhost-1.abc.tmp"]
  (out / ".train-00003.array_record.otherhost-1.abc.tmp").unlink()
  _check_exactly_once(_documents(out, "train"), docs)
  clean = _prep(_cfg(root), tmp_path / "clean")
  index = json.loads((out / "index.json").read_text())
  assert index["splits"] == clean["splits"]
  assert _files(out) == _files(tmp_path / "clean")


def _one_line_error(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  return err[0]


def test_bad_inputs_are_one_line_before_anything_is_written(corpus, tmp_path, monkeypatch,
                                                            capsys):
  root, _, _ = corpus
  out = tmp_path / "out"
  # A parquet without the text column.
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
  pq.write_table(pa.table({"body": ["x", "y"]}), bad / "b.parquet")
  line = _one_line_error(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out",
                         str(out), "--config.data.name=text_files",
                         f"--config.data.train_files={bad}/*")
  assert line.startswith(f"growjax prepare-data: {bad}/b.parquet has no column "
                         f"config.data.text_key='text' (columns: ['body'])"), line
  assert "set config.data.text_key" in line and not out.exists()
  # A .jsonl line without the field (the first line: checked before tokenizing).
  (bad / "b.parquet").unlink()
  (bad / "c.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
  line = _one_line_error(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out",
                         str(out), "--config.data.name=text_files",
                         f"--config.data.train_files={bad}/*")
  assert f"{bad}/c.jsonl:1 has no field config.data.text_key='text'" in line, line
  assert not out.exists()
  # A tokenizer.json that does not parse.
  (tmp_path / "tok").mkdir()
  (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0", "model": {')
  line = _one_line_error(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out",
                         str(out), f"--config.data.tokenizer=hf:{tmp_path}/tok")
  assert line.startswith(f"growjax prepare-data: {tmp_path}/tok/tokenizer.json is not a "
                         f"valid Hugging Face tokenizer.json"), line
  assert not out.exists()
  # A tokenizer larger than the model's vocabulary.
  line = _one_line_error(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out",
                         str(out), "--config.model.vocab_size=200")
  assert line == ("growjax prepare-data: config.data.tokenizer='byte' has 259 tokens, more "
                  "than config.model.vocab_size=200 — raise config.model.vocab_size to at "
                  "least 259 (or use a tokenizer that fits the model).")
  assert not out.exists()
  # An output dir holding something else.
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  line = _one_line_error(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out",
                         str(tmp_path / "foreign"))
  assert "is not empty (notes.txt) and is not a growjax prepare-data output" in line
  assert os.listdir(tmp_path / "foreign") == ["notes.txt"]


def test_damaged_shards_are_named_with_the_fix(corpus, tmp_path, monkeypatch, capsys):
  root, _, _ = corpus
  out = tmp_path / "out"
  _prep(_cfg(root), out)
  args = _config_args(root, out)
  # Another dataset's output: refused, untouched.
  line = _one_line_error(monkeypatch, capsys, *args[:-1], "--config.data.seq_len=16")
  assert line.startswith(f"growjax prepare-data: {out} already holds a prepared dataset") and (
      "seq_len" in line), line
  # A corrupted ArrayRecord file (same size, bytes flipped): --verify and the reader name it.
  shard = out / "train-00001.array_record"
  raw = bytearray(shard.read_bytes())
  raw[200:264] = bytes(b ^ 0xFF for b in raw[200:264])  # inside the records
  shard.write_bytes(bytes(raw))
  line = _one_line_error(monkeypatch, capsys, *args, "--verify")
  assert line == (f"growjax prepare-data: prepared shard {shard} is damaged (its sha256 "
                  f"differs from index.json's) — delete it and rerun `growjax prepare-data` "
                  f"with the same config (only missing shards are written again).")
  src = shards.open_shards(out, "train")
  with pytest.raises(ValueError, match=f"prepared shard {shard} .* delete it and rerun"):
    for g in range(40, 80):
      src[g]
  # An empty shard: named on a rerun (one directory listing) and by open_shards(check=True).
  shard.write_bytes(b"")
  line = _one_line_error(monkeypatch, capsys, *args)
  assert line.startswith(f"growjax prepare-data: prepared shard {shard} is empty, where "
                         f"index.json lists "), line
  assert line.endswith("— delete it and rerun `growjax prepare-data` with the same config "
                       "(only missing shards are written again).")
  with pytest.raises(ValueError, match="is empty"):
    shards.open_shards(out, "train", check=True)
  # Deleted as told: the rerun writes it again, identical.
  shard.unlink()
  (out / "index.json").unlink()
  _prep(_cfg(root), out)
  shards.verify_shards(out)


def test_gs_output_through_the_emulator(corpus, tmp_path, gcs, monkeypatch):  # noqa: F811
  root, docs, _ = corpus
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", gcs["STORAGE_EMULATOR_HOST"])
  remote = f"gs://{BUCKET}/prepared/corpus"
  index = _prep(_cfg(root), remote, workers=1)
  local = _prep(_cfg(root), tmp_path / "local")
  assert index == local
  from etils import epath
  names = sorted(p.name for p in epath.Path(remote).iterdir())
  assert names == sorted(["index.json", ".prepare", *_files(tmp_path / "local")])
  for f, data in _files(tmp_path / "local").items():
    assert (epath.Path(remote) / f).read_bytes() == data
  shards.verify_shards(remote)
  src = shards.open_shards(remote, "train")
  assert len(src) == index["splits"]["train"]["windows"]
  assert src[len(src) - 1] == shards.open_shards(tmp_path / "local", "train")[len(src) - 1]


def test_gs_sources_through_the_emulator(corpus, tmp_path, gcs):  # noqa: F811
  """Sources on gs:// (what Beam workers on Dataflow read): the same shards as local."""
  from etils import epath
  root, _, _ = corpus
  remote = epath.Path(f"gs://{BUCKET}/sources")
  for p in sorted(root.rglob("*")):
    if p.is_file():
      (remote / p.relative_to(root)).write_bytes(p.read_bytes())
  cfg = _cfg(root)
  cfg.train_files, cfg.validation_files = f"{remote}/*.*", f"{remote}/valid/*.jsonl"
  index = _prep(cfg, tmp_path / "from-gs")
  local = _prep(_cfg(root), tmp_path / "local")
  assert [s["path"] for s in index["sources"]][:2] == [f"{remote}/a.md", f"{remote}/b.txt"]
  assert [s["sha256"] for s in index["sources"]] == [s["sha256"] for s in local["sources"]]
  assert index["splits"] == local["splits"]
  assert _files(tmp_path / "from-gs") == _files(tmp_path / "local")


def test_a_prepared_tfds_dataset_as_the_source(tmp_path):
  """config.data.name='tfds': the text feature of a tfds dataset read by index (no
  TensorFlow), in its stored order, split into units of examples."""
  import inspect

  import tensorflow_datasets as tfds
  from etils import epath

  class TinyCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(tmp_path)  # no README/CITATIONS to find

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return epath.Path(inspect.getfile(cls))

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({"body": tfds.features.Text()}),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(60), "validation": self._generate_examples(9)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"body": f"tfds document {i} " * (1 + i % 4)}

  TinyCorpus(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = data_config.default_data_config()
  cfg.name, cfg.tfds_name, cfg.data_dir = "tfds", "tiny_corpus", str(tmp_path / "tfds")
  cfg.text_key, cfg.seq_len = "body", SEQ
  index = _prep(cfg, tmp_path / "out")
  assert [s["path"] for s in index["sources"]] == [
      f"tfds:tiny_corpus/{s}/{tmp_path}/tfds" for s in ("train", "validation")]
  _check_exactly_once(_documents(tmp_path / "out", "train"),
                      [f"tfds document {i} " * (1 + i % 4) for i in range(60)])
  cfg.text_key = "text"
  with pytest.raises(ValueError, match="has no field config.data.text_key='text' "
                                       r"\(fields: \['body'\]\)"):
    _prep(cfg, tmp_path / "out2")
  assert not (tmp_path / "out2").exists()  # refused before anything is written
