"""The `growjax` command: `growjax SUBCOMMAND [flags]`.

How a person meets the tool; each subcommand's flags, summary, example and the one
library function it calls are in `growjax.commands` (the `COMMANDS` table), and no
training logic lives in either:

- `growjax --help` lists the commands; `growjax CMD --help` its flags, their
  defaults and an example.
- Flags may be spelt with dashes or underscores (`--layer-map`, `--layer_map`).
- Every failure is one line, `growjax CMD: <what is wrong> — <the fix>`, exit 2
  for bad input (a ValueError / FileNotFoundError from the library, a bad flag or
  config) and 1 for a runtime failure; `--debug` (or GROWJAX_DEBUG=1) adds the
  traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import traceback

from absl import flags

from growjax.commands import (BAD_INPUT, COMMANDS, CURRENT_ARGV, RUNTIME_FAILURE, Command,
                              CommandError, default_workdir, parse_layer_map)

__all__ = ["BAD_INPUT", "COMMANDS", "CURRENT_ARGV", "RUNTIME_FAILURE", "Command",
           "CommandError", "GPU_MEM_FRACTION", "command_help", "default_workdir", "main",
           "parse", "parse_layer_map", "run_command", "usage"]


def usage() -> str:
  lines = ["usage: growjax COMMAND [flags]", "", "commands:"]
  lines += [f"  {c.name:<12} {c.summary}" for c in COMMANDS.values()]
  lines += ["", "`growjax COMMAND --help` lists a command's flags, defaults and an example.",
            "Every command takes --debug to print the traceback of a failure."]
  return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


def _underscored(arg: str) -> str:
  """--layer-map=0,1 -> --layer_map=0,1 (absl's spelling); values stay as they are."""
  if not arg.startswith("--"):
    return arg
  name, eq, value = arg.partition("=")
  return "--" + name[2:].replace("-", "_") + eq + value


def command_help(cmd: Command, fv: flags.FlagValues) -> str:
  lines = [f"usage: growjax {cmd.name} [flags]", "", f"{cmd.summary}.", "", "flags:"]
  for name in sorted(fv):
    flag = fv[name]
    if flag.name != name:   # short aliases
      continue
    value = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else (
        repr(flag.default) if isinstance(flag.default, str) else flag.default)
    default = "" if flag.default is None else f" (default: {value})"
    need = " (required)" if name in cmd.required else ""
    lines.append(f"  --{name}{need}{default}")
    lines.append(f"      {flag.help}")
  lines += ["  --debug", "      print the traceback of a failure (also GROWJAX_DEBUG=1).",
            "", "example:", f"  {cmd.example}"]
  return "\n".join(lines)


def _config_error(argv: list[str], exc: BaseException) -> CommandError:
  """A config file or override that failed to load -> the flag and the fix."""
  config_arg = next((a for a in argv if a.startswith("--config=")), None)
  if config_arg is None and "--config" in argv[:-1]:
    config_arg = "--config=" + argv[argv.index("--config") + 1]
  text = str(exc).strip().strip("'\"").replace("\\n", "\n")
  if isinstance(exc, SyntaxError):
    return CommandError(f"{config_arg}: syntax error at line {exc.lineno}: {exc.msg} — fix "
                        f"the config file")
  if "No such file" in text or isinstance(exc, FileNotFoundError):
    return CommandError(f"{config_arg}: no such file — give the path of a config file, e.g. "
                        f"--config=configs/tiny.py")
  if isinstance(exc, AttributeError) and "get_config" in text:
    return CommandError(f"{config_arg}: the file defines no get_config() — a config file "
                        f"defines `def get_config(arg=None)` returning a ConfigDict")
  if isinstance(exc, (AttributeError, KeyError)):
    field = text.splitlines()[0].strip("'\"\\ ")
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    override = next((a.partition("=")[0] for a in argv
                     if a.startswith("--config.") and field in a.partition("=")[0]), None)
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return CommandError(f"{override or config_arg}: config has no field {field!r}{hint} — "
                        f"check the spelling against the config file")
  last = text.splitlines()[-1] if text else type(exc).__name__
  return CommandError(f"{config_arg}: {last} — check the config file and its overrides")


def parse(cmd: Command, argv: list[str]) -> flags.FlagValues:
  """Flags of `cmd` from `argv` (without the command words); raises CommandError.

  config_flags finds `--config.FIELD=VALUE` overrides in `sys.argv`, so it is set to
  these args while parsing: `main(argv)` in-process parses exactly like the console."""
  argv = [_underscored(a) for a in argv if a not in ("--debug", "--nodebug")]
  saved = sys.argv
  sys.argv = [f"growjax {cmd.name}"] + argv
  try:
    return _parse_flags(cmd, argv)
  finally:
    sys.argv = saved


def _parse_flags(cmd: Command, argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  cmd.define(fv)
  if any(a in ("-h", "--help", "--helpfull", "-help") for a in argv):
    print(command_help(cmd, fv))
    raise SystemExit(0)
  # config_flags loads the file as module `config_config`, reusing one left in
  # sys.modules by an earlier call in this process; start clean each time.
  sys.modules.pop("config_config", None)
  try:
    rest = fv([f"growjax {cmd.name}"] + argv)[1:]
  except flags.IllegalFlagValueError as e:
    text = str(e)
    if "--config" in text and ("Error" in text or "error" in text):
      cause = e.__cause__ or e.__context__
      if cause is not None:
        raise _config_error(argv, cause) from None
    raise CommandError(f"{text} — see `growjax {cmd.name} --help`") from None
  except flags.Error as e:
    raise CommandError(f"{e} — see `growjax {cmd.name} --help`") from None
  except (Exception, SystemExit) as e:  # config_flags loads the file while parsing
    if isinstance(e, SystemExit) and e.code in (0, None):
      raise
    raise _config_error(argv, e) from None
  if "config" in fv:
    error = getattr(fv["config"].value, "_error", None)  # config_flags defers load errors
    if error is not None:
      raise _config_error(argv, error) from None
  if rest and cmd.positional:
    if len(rest) > 1 or fv[cmd.positional].value is not None:
      raise CommandError(f"unexpected argument(s) {' '.join(rest)} — e.g. {cmd.example}")
    fv[cmd.positional].value = rest[0]
  missing = [f"--{n}" for n in cmd.required if fv[n].value is None]
  if missing:
    raise CommandError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       f"required — e.g. {cmd.example}")
  return fv


def _runtime_message(exc: BaseException) -> str:
  if getattr(exc, "one_line", None):   # checkpoint.DiskFull: directory, needed, free, fix
    return str(exc.one_line)
  if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
    where = exc.filename or "the output directory"
    return (f"no space left on the device writing {where} — free space or lower "
            f"config.train.keep_checkpoints; the last complete checkpoint is kept")
  first = (str(exc).strip().splitlines() or [""])[0]
  if not type(exc).__module__.startswith("growjax"):   # growjax's own lines name paths
    first = first[:300]
  return (f"{type(exc).__name__}: {first} — rerun with --debug for the traceback")


def _classify(exc: BaseException) -> tuple[str, int]:
  from growjax import console
  if isinstance(exc, CommandError):
    return str(exc), exc.code
  if isinstance(exc, (ValueError, FileNotFoundError)):
    return str(exc), BAD_INPUT
  if isinstance(exc, KeyboardInterrupt):
    return "interrupted — rerun the same command to resume", console.INTERRUPTED
  return _runtime_message(exc), RUNTIME_FAILURE


_LOG: dict[str, str] = {}   # the running command's log file of library messages


def _log_dir(cmd: Command, fv: flags.FlagValues) -> str | None:
  """Where the command's library log goes: the run directory of train and sweep (which
  hold only growjax's files). Commands whose output directory must be new or empty
  (grow, import-hf, export-hf, prepare-data), a sweep's --dry_run (it writes nothing) and
  the rest log to a temp file."""
  if cmd.name == "train":
    return fv.workdir or default_workdir(fv["config"].config_filename)
  if cmd.name == "sweep" and not fv.job and not fv.dry_run:
    return fv.workdir or default_workdir(fv["config"].config_filename) + "_sweep"
  return None


def run_command(cmd: Command, argv: list[str], debug: bool) -> int:
  """Runs `cmd`; every failure, signal and lost process becomes one line (growjax.console:
  library output goes to a log file unless --debug)."""
  from growjax import console
  CURRENT_ARGV[:] = argv
  _LOG.clear()
  message, code = None, 0
  with console.session(cmd.name):
    try:
      fv = parse(cmd, argv)
      if "heartbeat_timeout" in fv and fv.heartbeat_timeout:
        os.environ["GROWJAX_HEARTBEAT_TIMEOUT_S"] = str(fv.heartbeat_timeout)
      with contextlib.ExitStack() as routing:
        if not debug:
          directory = _log_dir(cmd, fv)
          if directory and "process_id" in fv and fv.process_id > 0:
            directory = os.path.join(directory, "logs", f"process_{fv.process_id}")
          _LOG["path"] = console.log_path(directory, cmd.name)
          routing.enter_context(console.routed(_LOG["path"]))
        cmd.run(fv)
        message, code = console.after_run()
    except SystemExit:
      raise
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line
      message, code = _classify(e)
      if debug:
        traceback.print_exc()
    distributed = sys.modules.get("growjax.distributed")
    if distributed is not None and distributed.multiprocess():
      distributed.finish(failed=code not in (0, console.INTERRUPTED))
    if message:
      print(f"growjax {cmd.name}: {message}", file=sys.stderr, flush=True)
    if code and distributed is not None and distributed.multiprocess():
      sys.stdout.flush()
      os._exit(code)   # JAX's teardown would wait for (or abort on) a lost peer
  return code


# JAX preallocates 75% of a GPU's memory by default; MaxText's GPU recipes run at 0.94,
# where the faster cuDNN packed layout for document masking fits at 1.1B, batch 24
# (growjax.train.attention_choice, whose line names the value). Set only where the user has not,
# before JAX creates its GPU client; CPU and TPU ignore it.
GPU_MEM_FRACTION = "0.94"


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else BAD_INPUT
  name = argv[1]
  if name not in COMMANDS:
    print(f"growjax: unknown command {name!r} — choose one of {', '.join(COMMANDS)}\n\n"
          f"{usage()}", file=sys.stderr)
    return BAD_INPUT
  debug = "--debug" in argv or os.environ.get("GROWJAX_DEBUG", "") not in ("", "0")
  if not debug:
    from growjax import console
    console.native_log_defaults()
  return run_command(COMMANDS[name], argv[2:], debug)


if __name__ == "__main__":
  sys.exit(main())
