"""The command as a person meets it, through the console entry point (`sys.argv`, then
`main()`, as the `growjax` script runs it): --help everywhere, dash or underscore
spellings, and one line `growjax CMD: <what> — <fix>` with exit code 2 for bad input."""

import os
import subprocess
import sys

import pytest

from growjax import cli, commands

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
TINY = os.path.join(CONFIGS, "tiny.py")


def run(monkeypatch, capsys, *args):
  monkeypatch.setattr(sys, "argv", ["growjax", *args])
  try:
    code = cli.main()
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_top_level_help_lists_every_command(monkeypatch, capsys):
  code, out, _ = run(monkeypatch, capsys, "--help")
  assert code == 0
  for name, cmd in cli.COMMANDS.items():
    assert f"  {name}" in out and cmd.summary in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_answers_help_with_flags_defaults_and_an_example(name, monkeypatch,
                                                                        capsys):
  code, out, err = run(monkeypatch, capsys, name, "--help")
  assert code == 0 and not err
  assert f"usage: growjax {name}" in out and "example:" in out
  assert cli.COMMANDS[name].example in out
  for required in cli.COMMANDS[name].required:
    assert f"--{required} (required)" in out


def test_console_script_help_runs_as_installed():
  """The real `growjax` executable beside this interpreter (what users type)."""
  exe = os.path.join(os.path.dirname(sys.executable), "growjax")
  if not os.path.exists(exe):
    pytest.skip("growjax console script not installed in this environment")
  done = subprocess.run([exe, "grow", "--help"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "--layer_map" in done.stdout


def test_dash_and_underscore_spellings_are_the_same_flag():
  fv = cli.parse(cli.COMMANDS["grow"], ["--from=a", "--to=b", f"--config={TINY}",
                                        "--layer-map=0,-1", "--opt-state=grow"])
  assert fv.layer_map == ["0", "-1"] and fv.opt_state == "grow"
  fv = cli.parse(cli.COMMANDS["grow"], ["--from=a", "--to=b", f"--config={TINY}",
                                        "--layer_map=0,-1", "--opt_state=grow"])
  assert fv.layer_map == ["0", "-1"] and fv.opt_state == "grow"
  assert cli.parse_layer_map(["0", "-1", "1", "-1"]) == [0, -1, 1, -1]


@pytest.mark.parametrize("args,expected", [
    (["train", f"--config={TINY}", "--config.train.stpes=10"],
     "--config.train.stpes: config has no field 'stpes' (did you mean 'steps'?)"),
    (["train", "--config=configs/nope.py"], "--config=configs/nope.py: no such file"),
    (["train", "--config={bad_syntax}"], "syntax error at line 1"),
    (["train", "--config={no_get_config}"], "defines no get_config()"),
    (["train", f"--config={TINY}", "--config.train.steps=abc"], "--config.train.steps=abc"),
    (["train", f"--config={TINY}", "--workdir={a_file}"], "is a file"),
    (["train"], "--config is required"),
    (["train", f"--config={TINY}", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["grow", "--from=a", "--to=b", f"--config={TINY}", "--layer_map=0,1,x"],
     "--layer_map entry 'x' is not an integer"),
    (["grow", f"--config={TINY}"], "--from, --to are required"),
])
def test_bad_input_is_one_line_naming_the_flag_and_the_fix(args, expected, tmp_path,
                                                           monkeypatch, capsys):
  (tmp_path / "bad.py").write_text("def get_config(:\n")
  (tmp_path / "noget.py").write_text("x = 1\n")
  (tmp_path / "file").write_text("")
  args = [a.format(bad_syntax=tmp_path / "bad.py", no_get_config=tmp_path / "noget.py",
                   a_file=tmp_path / "file") for a in args]
  code, _, err = run(monkeypatch, capsys, *args)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith(f"growjax {args[0]}: ") and " — " in lines[0]
  assert expected in lines[0]


def test_runtime_failure_is_one_line_and_debug_adds_the_traceback(monkeypatch, capsys):
  def boom(fv):
    raise RuntimeError("the device fell over\nsecond line")
  monkeypatch.setitem(cli.COMMANDS, "plan", cli.Command(
      "plan", "x", "growjax plan", commands._define_plan, boom))
  code, _, err = run(monkeypatch, capsys, "plan", "--params=1e9")
  assert code == 1
  assert err.strip() == ("growjax plan: RuntimeError: the device fell over — rerun with "
                         "--debug for the traceback")
  code, _, err = run(monkeypatch, capsys, "plan", "--params=1e9", "--debug")
  assert code == 1 and "Traceback" in err and err.strip().endswith("for the traceback")


def test_overrides_parse_in_process_as_on_the_console(monkeypatch):
  """config_flags reads overrides from sys.argv: `main(argv)` must not depend on it."""
  monkeypatch.setattr(sys, "argv", ["pytest"])
  for _ in range(2):   # twice: nothing left over from the first parse
    fv = cli.parse(cli.COMMANDS["train"], [f"--config={TINY}", "--config.train.steps=3",
                                           "--config.train.global-batch-size=4"])
    assert fv.config.train.steps == 3 and fv.config.train.global_batch_size == 4
