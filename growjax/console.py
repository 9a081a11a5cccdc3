"""What a person sees on the console: growjax's own lines and, on failure, one line.

Libraries talk a lot when something goes wrong: orbax logs each failed write of a
full disk from its threads (absl logging, with tracebacks), tensorstore's callbacks
into a closed asyncio loop print `RuntimeError: Event loop is closed` tracebacks,
XLA and the coordination service log from C++. `routed(log_path)` sends all of that
to a log file (the command's workdir's `growjax.log`) so the one line `growjax CMD:
... — fix` is what the console shows; growjax's progress lines (print to stdout,
its own warnings, the lines of `prepare-data`'s and the loader's `print(...,
file=sys.stderr)`) still reach it. `--debug` routes nothing.

Signals: Ctrl-C and SIGTERM outside the train loop (start-up: imports, building the
state, compiling) end the command at once with one line. Inside the loop
`StopSignal` asks it to save and return (SIGTERM exits 0 as it always has, Ctrl-C
130); a second Ctrl-C ends the process at once with one line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings

LOG_NAME = "growjax.log"
INTERRUPTED = 130   # 128 + SIGINT: the shell's code for a command stopped by Ctrl-C
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def signal_name(signum: int) -> str:
  return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


# The running command, for lines printed from a signal handler or a JAX thread.
_state = {"command": "growjax", "stop": None, "loops": 0}


def say(message: str) -> None:
  """The one failure line, `growjax CMD: message`, on the console's stderr."""
  stream = _console_err or sys.stderr
  print(f"{_state['command']}: {message}", file=stream, flush=True)


def exit_now(message: str, code: int) -> None:
  """Ends the process from any thread: one line, no Python or C++ teardown (which
  would wait on the lost peer or abort with a stack dump)."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  with contextlib.suppress(Exception):   # a reentrant print: still exit
    say(message)
  os._exit(code)


def native_log_defaults() -> None:
  """C++ logs of XLA / gRPC: warnings and up (XLA's compile-time notes are not for the
  console), unless the user set them. Before jax is imported."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# ------------------------------------------------------------------------ signals


TWICE = ("interrupted twice: stopped at once, without saving — rerun the same command to "
         "resume from the last checkpoint")


def stopped_message(signum: int) -> tuple[str, int]:
  """(line, exit code) for a signal outside the train loop: 130 for Ctrl-C, 143 for
  SIGTERM (128 + the signal, the shell's convention)."""
  verb = "interrupted by" if signum == signal.SIGINT else "stopped by"
  if _state["command"] not in ("growjax train", "growjax sweep"):
    where, fix = "before it finished", "rerun the same command"
  elif _state["loops"]:
    where, fix = ("outside the training loop (between stages or finishing); no new "
                  "checkpoint was saved"), "rerun the same command to resume"
  else:
    where, fix = ("during start-up, before the first training step; no checkpoint was "
                  "saved"), "rerun the same command to resume"
  return f"{verb} {signal_name(signum)} {where} — {fix}", 128 + signum


def _outside_loop(signum, _frame):
  """Start-up (imports, building the state, compiling), between stages, finishing. The
  process ends at once, as kill -9 would (every write of growjax is safe against that):
  an exception raised here can land in a gc callback or a finalizer and be lost. After
  the loop stopped for a Ctrl-C, a second one ends it; a second SIGTERM lets the save
  finish."""
  if _state["stop"] is not None:
    if signum == signal.SIGINT:
      exit_now(TWICE, INTERRUPTED)
    return
  exit_now(*stopped_message(signum))


@contextlib.contextmanager
def session(command: str):
  """Around one command: its name for every line, and Ctrl-C / SIGTERM outside the
  train loop ending it with one line."""
  _state.update(command=f"growjax {command}", stop=None, loops=0)
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGINT, signal.SIGTERM):
      previous[s] = signal.signal(s, _outside_loop)
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def after_run() -> tuple[str | None, int]:
  """(line, exit code) once the command returned: a Ctrl-C the loop saved for is said
  and exits 130; a SIGTERM stop exits 0 as it always has."""
  if _state["stop"] == signal.SIGINT:
    return ("interrupted by Ctrl-C (SIGINT): the checkpoint of the step above is saved — "
            "rerun the same command to resume"), INTERRUPTED
  return None, 0


class StopSignal:
  """SIGTERM (a preemption, `launch/tpu_vm.sh stop`) or Ctrl-C -> save and return.

  One process: a Python handler sets `event`, which the loop reads after each step.
  Several processes: JAX's preemption service (started by `jax.distributed`) catches
  SIGTERM on whichever process gets it and agrees one step for all; the loop asks
  orbax's `reached_preemption`. No SIGTERM handler is installed then (it would replace
  the service's and leave each process on its own flag, saving at different steps and
  deadlocking); Ctrl-C is turned into a SIGTERM to this process, so the service
  handles it too. A second Ctrl-C ends the process at once (exit 130).
  """

  def __init__(self):
    self.event = threading.Event()
    self._previous = {}

  def _first(self, signum, _frame):
    if self.event.is_set() and signum == signal.SIGINT:
      exit_now(TWICE, INTERRUPTED)
    if _state["stop"] != signal.SIGINT:
      _state["stop"] = signum
    self.event.set()

  def _forward(self, signum, _frame):
    if _state["stop"] == signal.SIGINT:
      exit_now(TWICE, INTERRUPTED)
    _state["stop"] = signal.SIGINT
    os.kill(os.getpid(), signal.SIGTERM)   # JAX's preemption service's handler

  def __enter__(self):
    import jax
    _state["loops"] += 1
    if threading.current_thread() is not threading.main_thread():
      return self
    if jax.process_count() == 1:
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._first)
    else:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


# ------------------------------------------------------------------------ log routing

_console_err = None   # the console's stderr while fd 2 goes to the log file


def log_path(directory: str | None, command: str) -> str:
  """WORKDIR/growjax.log for a local workdir (created if missing: `routed` removes both
  again when the command ended without a word from any library, so a command refused
  before it ran leaves nothing behind); a temp file for a command without one (or a
  gs:// one: the log is written with plain file calls)."""
  if directory and "://" not in directory:
    try:
      if not os.path.isdir(directory):
        os.makedirs(directory)
        _created_dirs.add(os.path.abspath(directory))
      return os.path.join(directory, LOG_NAME)
    except OSError:
      pass
  return os.path.join(tempfile.gettempdir(), f"growjax-{command}-{os.getpid()}.log")


_created_dirs: set[str] = set()   # workdirs `log_path` created for the log alone


class _OwnWarningsToConsole:
  """warnings.showwarning: growjax's own warnings (its user-facing notes) stay on the
  console, every library's go to the log."""

  def __init__(self, log_file, original):
    self.log_file, self.original = log_file, original

  def __call__(self, message, category, filename, lineno, file=None, line=None):
    if os.path.abspath(filename).startswith(_PACKAGE):
      self.original(message, category, filename, lineno, file, line)
    else:
      with contextlib.suppress(ValueError, OSError):
        self.log_file.write(warnings.formatwarning(message, category, filename, lineno,
                                                   line))
        self.log_file.flush()


@contextlib.contextmanager
def routed(path: str):
  """Library output -> `path`. In a console run it stays so until the process ends (orbax
  and asyncio talk at exit too); when the command runs in-process under a capture (the
  tests), everything is restored afterwards and fd 2 is left alone."""
  global _console_err
  real = sys.stderr is sys.__stderr__ and _stderr_fd() is not None
  created = not os.path.exists(path)
  log_file = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
  log_file.write(f"==== {_state['command']} (pid {os.getpid()})\n")
  quiet_size = log_file.tell() if created else None   # a log of ours holding nothing

  def to_log(*parts):
    with contextlib.suppress(ValueError, OSError):   # closed: an in-process run ended
      log_file.write("".join(parts))
      log_file.flush()

  saved = dict(excepthook=sys.excepthook, unraisablehook=sys.unraisablehook,
               threading_excepthook=threading.excepthook,
               showwarning=warnings.showwarning)
  sys.excepthook = lambda t, v, tb: to_log(*traceback.format_exception(t, v, tb))
  sys.unraisablehook = lambda u: to_log(
      f"Exception ignored in: {u.object!r}\n",
      *traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback))
  threading.excepthook = lambda a: to_log(
      f"Exception in thread {a.thread.name if a.thread else '?'}:\n",
      *traceback.format_exception(a.exc_type, a.exc_value, a.exc_traceback))
  warnings.showwarning = _OwnWarningsToConsole(log_file, saved["showwarning"])

  # Python logging (absl's, orbax's, jax's, asyncio's): the root logger's handlers -> the
  # file. absl adds its stderr handler only to a root logger without handlers.
  root = logging.getLogger()
  handler = logging.StreamHandler(log_file)
  handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s: %(message)s"))
  saved_handlers, saved_level = root.handlers[:], root.level
  root.handlers = [handler]
  root.setLevel(logging.WARNING)
  absl_logger = logging.getLogger("absl")
  saved_absl = absl_logger.handlers[:]
  absl_logger.handlers = []

  # C++ (XLA, the coordination service, tensorstore) writes to fd 2: it goes to the
  # file too, while sys.stderr keeps writing to the console.
  saved_fd, saved_stderr = None, sys.stderr
  if real:
    sys.stderr.flush()
    saved_fd = os.dup(2)
    _console_err = open(os.dup(saved_fd), "w", buffering=1, encoding="utf-8",
                        errors="backslashreplace")
    os.dup2(log_file.fileno(), 2)
    sys.stderr = _console_err
  failed = False
  try:
    yield
  except BaseException:
    failed = True   # a command refused before it ran leaves no log of its own behind
    raise
  finally:
    tidy = quiet_size is not None and (failed or os.path.dirname(path) ==
                                       tempfile.gettempdir())
    if real:   # the process ends next: library noise at exit goes to the log too
      with contextlib.suppress(Exception):
        _console_err.flush()
      if tidy:
        atexit.register(_remove_if_quiet, path, quiet_size)
    else:
      root.handlers, absl_logger.handlers = saved_handlers, saved_absl
      root.setLevel(saved_level)
      sys.excepthook, sys.unraisablehook = saved["excepthook"], saved["unraisablehook"]
      threading.excepthook = saved["threading_excepthook"]
      warnings.showwarning = saved["showwarning"]
      log_file.close()
      if tidy:
        _remove_if_quiet(path, quiet_size)


def _remove_if_quiet(path: str, header: int) -> None:
  """A log this command created that holds only its header is not worth keeping, nor the
  workdir `log_path` created for it alone (removed only while empty)."""
  with contextlib.suppress(OSError):
    if os.path.getsize(path) <= header:
      os.remove(path)
      directory = os.path.dirname(os.path.abspath(path))
      if directory in _created_dirs:
        os.rmdir(directory)


def _stderr_fd() -> int | None:
  """2 when sys.stderr is the process's real stderr (not a test's capture)."""
  try:
    return 2 if sys.stderr.fileno() == 2 else None
  except (AttributeError, OSError, ValueError):
    return None
