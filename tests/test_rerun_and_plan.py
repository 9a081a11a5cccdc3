"""Issue 26: a finished `growjax import-hf` / `export-hf` rerun with the same source and
options is "nothing to do" (exit 0, nothing rewritten), as a finished `grow` is; other
options or a changed source into the non-empty --to are still refused. `growjax plan`
refuses a growth timing d at or past the budget's own tokens D = C / (6 N)."""

import os
import subprocess
import sys

import hf_dirs
from growjax import cli, lease

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  code = cli.main()
  out = capsys.readouterr()
  return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def snapshot(root) -> dict:
  """Every file under `root` with its size and mtime (a command's lease file aside)."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      if not lease.is_lease_file(f):
        st = os.stat(os.path.join(d, f))
        out[os.path.relpath(os.path.join(d, f), root)] = (st.st_size, st.st_mtime_ns)
  return out


def test_a_finished_import_and_export_rerun_is_nothing_to_do(tmp_path, monkeypatch, capsys):
  src, ck, ex = str(tmp_path / "hf"), str(tmp_path / "ck"), str(tmp_path / "ex")
  hf_dirs.write(src)
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}")
  assert code == 0, err
  before = snapshot(ck)
  assert "growjax_import.json" in before and "0/_CHECKPOINT_METADATA" in before

  code, out, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}")
  assert code == 0 and err == [], err
  assert out == [f"already imported, nothing to do: {ck} holds the import of {src}"]
  assert snapshot(ck) == before

  # Other options, another source, or a source changed since: refused, nothing touched.
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}",
                     "--dtype=float32")
  assert code == 2 and err == [
      f"growjax import-hf: --to={ck} exists and is not empty (it holds the import of the "
      f"same source with other options: --dtype='bfloat16' there, 'float32' now) — choose "
      f"a new or empty directory; nothing was written"]
  other = str(tmp_path / "other")
  hf_dirs.write(other, seed=1)
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={other}", f"--to={ck}")
  assert code == 2 and err == [
      f"growjax import-hf: --to={ck} exists and is not empty (it holds the import of "
      f"{src}) — choose a new or empty directory; nothing was written"]
  st = os.stat(os.path.join(src, "model.safetensors"))
  os.utime(os.path.join(src, "model.safetensors"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  code, _, err = run(monkeypatch, capsys, "import-hf", f"--from={src}", f"--to={ck}")
  assert code == 2 and len(err) == 1 and "it holds the import of the same source, whose " \
      "files have changed since" in err[0], err
  assert snapshot(ck) == before
  os.utime(os.path.join(src, "model.safetensors"), ns=(st.st_atime_ns, st.st_mtime_ns))

  # export-hf: the same, keyed on the checkpoint step and its files.
  code, _, err = run(monkeypatch, capsys, "export-hf", f"--from={ck}", f"--to={ex}")
  assert code == 0, err
  exported = snapshot(ex)
  assert "growjax_export.json" in exported and "model.safetensors" in exported
  code, out, err = run(monkeypatch, capsys, "export-hf", f"--from={ck}", f"--to={ex}")
  assert code == 0 and err == [], err
  assert out == [f"already exported, nothing to do: {ex} holds the export of {ck}/0"]
  assert snapshot(ex) == exported
  code, _, err = run(monkeypatch, capsys, "export-hf", f"--from={ck}", f"--to={ex}",
                     "--max_shard_size=100KB")
  assert code == 2 and err == [
      f"growjax export-hf: --to={ex} exists and is not empty (it holds the export of the "
      f"same source with other options: --max_shard_size=5000000000 there, 100000 now) — "
      f"choose a new or empty directory; nothing was written"]
  assert snapshot(ex) == exported and snapshot(ck) == before


def plan(*args):
  return subprocess.run([sys.executable, "-m", "growjax", "plan", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_plan_refuses_a_growth_timing_past_the_budget_tokens():
  inside = plan("--params", "4.1e8", "--flops", "1e19")   # inside the fit's declared range
  assert inside.returncode == 2 and inside.stdout == "", inside.stdout
  assert inside.stderr.strip() == (
      "growjax plan: growth timing d = 2.706e+10 tokens is 6.66 times the whole budget's "
      "D = C/(6N) = 4.065e+09 tokens (N = 4.1e+08, C = 1e+19 FLOPs): the small stage alone "
      "would take the whole budget, so growth cannot pay — give a budget above "
      "C = 3.74e+19 FLOPs (--flops 3.74e+19, or --tokens 1.52e+10), where d falls below D, "
      "or train the target from scratch")
  past = plan("--params", "1.1e9", "--tokens", "2e10")
  assert past.returncode == 2 and len(past.stderr.strip().splitlines()) == 1
  assert past.stderr.startswith("growjax plan: growth timing d = 2.143e+10 tokens is 1.07 "
                                "times the whole budget's D = C/(6N) = 2e+10 tokens")
  # The budget it names is enough: d < D there, and the plan is printed.
  for args in (("--params", "4.1e8", "--flops", "3.74e19"),
               ("--params", "4.1e8", "--tokens", "1.52e10"),
               ("--params", "1.1e9", "--tokens", "2.11e10")):
    ok = plan(*args)
    assert ok.returncode == 0 and "growth timing d = " in ok.stdout, (args, ok.stderr)
  ok = plan("--params", "7e9", "--tokens", "2e12")   # the paper's 7B example: d = 11.1B
  assert ok.returncode == 0 and "d = 1.111e+10 tokens" in ok.stdout
