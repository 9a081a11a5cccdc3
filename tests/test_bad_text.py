"""Binary or invalid UTF-8 sources (issue 26): `growjax prepare-data` and `growjax
tokenizer` refuse them in one line naming the file, the line (JSON-lines) and the byte
offset of the first bad byte, before anything is written; with
config.data.invalid_utf8='replace' the bad sequences become U+FFFD and are counted."""

import gzip
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from growjax import cli
from growjax.data import shards
from growjax.data.tokenizers import ByteTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
SEQ = 32
FIX = ("fix or remove the file, or set config.data.invalid_utf8='replace' to replace bad "
       "bytes with U+FFFD (a count is printed)")
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out, out.err.strip().splitlines()


def _prepare(monkeypatch, capsys, train, out, *extra, workers=1):
  valid = os.path.join(os.path.dirname(train), "valid.txt")
  if not os.path.exists(valid):
    with open(valid, "w") as f:
      f.write(TEXT)
  return _run(monkeypatch, capsys, "prepare-data", "--config", TINY, "--out", str(out),
              "--workers", str(workers), "--config.data.name=text_files",
              f"--config.data.train_files={train}", f"--config.data.validation_files={valid}",
              f"--config.data.seq_len={SEQ}", *extra)


def _nothing_prepared(out):
  """No index.json, no shard, no manifest: nothing that looks prepared or started."""
  listed = os.listdir(out) if os.path.isdir(out) else []
  return not [n for n in listed if not n.startswith(".growjax-lease")]


def _first_bad(data: bytes) -> tuple[str, int]:
  """What an independent reading finds first: ('utf8', offset) or ('nul', offset)."""
  try:
    data.decode("utf-8")
    bad = len(data)
  except UnicodeDecodeError as e:
    bad = e.start
  nul = data.find(b"\0")
  return ("nul", nul) if 0 <= nul < bad else ("utf8", bad)


def test_random_bytes_are_refused_by_the_workers_in_one_line(tmp_path, monkeypatch, capsys):
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "a.txt").write_text(TEXT)
  data = np.random.default_rng(26).bytes(1 << 16)
  (tmp_path / "corpus" / "b.txt").write_bytes(data)
  out = tmp_path / "out"
  code, _, err = _prepare(monkeypatch, capsys, f"{tmp_path}/corpus/*.txt", out, workers=2)
  kind, offset = _first_bad(data)
  bad = tmp_path / "corpus" / "b.txt"
  assert code == 2 and len(err) == 1, err
  if kind == "utf8":
    assert err[0] == (f"growjax prepare-data: {bad}: invalid UTF-8 at byte {offset} "
                      f"(0x{data[offset]:02x}) — {FIX}")
  else:
    assert err[0].startswith(f"growjax prepare-data: {bad} is a binary file, not UTF-8 "
                             f"text (a NUL byte at byte {offset})"), err
  assert not (out / "index.json").exists() and _nothing_prepared(out)
  # 'replace' does not make a binary file text: it is refused still (it holds NULs).
  assert b"\0" in data
  code, _, err = _prepare(monkeypatch, capsys, f"{tmp_path}/corpus/*.txt", out,
                          "--config.data.invalid_utf8=replace", workers=2)
  assert code == 2 and len(err) == 1 and f"{bad} is a binary file" in err[0], err
  assert _nothing_prepared(out)


def test_one_bad_byte_is_named_then_replaced_and_counted(tmp_path, monkeypatch, capsys):
  (tmp_path / "corpus").mkdir()
  bad = tmp_path / "corpus" / "x.txt"
  bad.write_bytes(TEXT[:1234].encode() + b"\xff" + TEXT[:500].encode())
  (tmp_path / "corpus" / "y.md").write_bytes(b"caf\xe9 au lait, " + TEXT[:300].encode())
  out = tmp_path / "out"
  code, _, err = _prepare(monkeypatch, capsys, f"{tmp_path}/corpus/*", out)
  assert err == [f"growjax prepare-data: {bad}: invalid UTF-8 at byte 1234 (0xff) — {FIX}"]
  assert code == 2 and _nothing_prepared(out)

  code, stdout, err = _prepare(monkeypatch, capsys, f"{tmp_path}/corpus/*", out,
                               "--config.data.invalid_utf8=replace")
  assert code == 0, err
  assert ("prepare-data: replaced 2 invalid UTF-8 sequences in 2 files with U+FFFD"
          in err), err
  index = json.loads((out / "index.json").read_text())
  src = shards.open_shards(str(out), "train")
  windows = [np.frombuffer(src[g], np.uint16).astype(np.int64) for g in range(len(src))]
  text = ByteTokenizer().decode(np.concatenate([windows[0]] + [w[1:] for w in windows[1:]]))
  assert index["splits"]["train"]["windows"] > 0
  assert TEXT[1200:1234] + "\ufffd" + TEXT[:20] in text and "caf\ufffd au lait" in text


def test_a_bad_line_of_json_lines_is_named(tmp_path, monkeypatch, capsys):
  (tmp_path / "corpus").mkdir()
  path = tmp_path / "corpus" / "a.jsonl"
  lines = [json.dumps({"text": f"document {i}: {TEXT[:80]}"}).encode() + b"\n"
           for i in range(20)]
  lines[13] = b'{"text": "bad \xff byte"}\n'
  path.write_bytes(b"".join(lines))
  offset = len(b"".join(lines[:13])) + lines[13].index(b"\xff")
  out = tmp_path / "out"
  code, _, err = _prepare(monkeypatch, capsys, str(path), out, workers=2)
  assert err == [f"growjax prepare-data: {path}:14: invalid UTF-8 at byte {offset} (0xff) "
                 f"— {FIX}"]
  assert code == 2 and _nothing_prepared(out)
  # The same in a .jsonl.gz (offsets of the decompressed text) and a parquet column.
  path.unlink()
  gz = tmp_path / "corpus" / "b.jsonl.gz"
  with gzip.open(gz, "wb") as f:
    f.write(b"".join(lines))
  code, _, err = _prepare(monkeypatch, capsys, str(gz), out)
  assert err == [f"growjax prepare-data: {gz}:14: invalid UTF-8 at uncompressed byte "
                 f"{offset} (0xff) — {FIX}"]
  gz.unlink()
  texts = pa.array([b"fine " * 20, b"also fine", b"bad \xfe here"], pa.binary())
  pq.write_table(pa.table({"text": texts.view(pa.string())}), tmp_path / "corpus" / "c.parquet",
                 row_group_size=2)
  code, _, err = _prepare(monkeypatch, capsys, f"{tmp_path}/corpus/c.parquet", out)
  assert err == [f"growjax prepare-data: {tmp_path}/corpus/c.parquet: row 2, column 'text': "
                 f"invalid UTF-8 at string byte 4 (0xfe) — {FIX}"]
  assert code == 2 and _nothing_prepared(out)


def test_nul_bytes_in_valid_utf8_are_binary_and_the_tokenizer_refuses_too(
    tmp_path, monkeypatch, capsys):
  (tmp_path / "corpus").mkdir()
  nul = tmp_path / "corpus" / "n.txt"
  nul.write_bytes(TEXT[:100].encode() + b"\0" + TEXT[:100].encode())
  out = tmp_path / "out"
  code, _, err = _prepare(monkeypatch, capsys, str(nul), out)
  assert err == [f"growjax prepare-data: {nul} is a binary file, not UTF-8 text (a NUL byte "
                 f"at byte 100) — remove it from the sources (config.data.train_files / "
                 f"validation_files)."]
  assert code == 2 and _nothing_prepared(out)
  # `growjax tokenizer` reads documents the same way: refused before it trains.
  bad = tmp_path / "corpus" / "x.txt"
  bad.write_bytes(TEXT[:50].encode() + b"\xc3(" + TEXT.encode())
  nul.unlink()
  code, _, err = _run(monkeypatch, capsys, "tokenizer", "--input", f"{tmp_path}/corpus/*",
                      "--vocab_size", "300", "--model_prefix", str(tmp_path / "tok"))
  assert err == [f"growjax tokenizer: {bad}: invalid UTF-8 at byte 50 (0xc3) — fix the file "
                 f"(convert it to UTF-8) or remove it from --input"]
  assert code == 2 and not any(n.startswith("tok") for n in os.listdir(tmp_path))
  # An unknown mode is named with its choices.
  code, _, err = _prepare(monkeypatch, capsys, str(bad), out, "--config.data.invalid_utf8=skip")
  assert code == 2 and err == [
      "growjax prepare-data: config.data.invalid_utf8='skip' is unknown — use 'error' "
      "(refuse invalid UTF-8, the default) or 'replace' (replace it with U+FFFD and print "
      "a count)."]


@pytest.mark.parametrize("share", [0.02, 0.2])
def test_control_characters_past_five_percent_are_binary(share, tmp_path, monkeypatch,
                                                         capsys):
  rng = np.random.default_rng(1)
  body = bytearray(TEXT.encode() * 2)
  for i in rng.choice(len(body), int(share * len(body)), replace=False):
    body[i] = 0x01
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "a.txt").write_bytes(bytes(body))
  code, _, err = _prepare(monkeypatch, capsys, f"{tmp_path}/c/a.txt", tmp_path / "out")
  if share < 0.05:
    assert code == 0, err
  else:
    assert code == 2 and len(err) == 1 and "is a binary file, not UTF-8 text (20% of its " \
        "bytes are control characters" in err[0], err
