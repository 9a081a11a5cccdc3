"""Files growjax writes get the mode the user's umask gives (0644 under umask 022), as
`open()` would: `tempfile.mkstemp` and safetensors create theirs 0600, so a prepared
corpus or an exported model renamed into place would be unreadable to a teammate or a
service account on a shared filesystem. Directories are not touched here."""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def umask() -> int:
  """The process's umask, read without changing it where Linux says it
  (/proc/self/status), else set and restored under a lock."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _lock:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def file_mode() -> int:
  """The mode `open(path, 'w')` gives a new file: 0666 less the umask."""
  return 0o666 & ~umask()


def as_umask(target: int | str | os.PathLike) -> None:
  """Sets a file (a path or an open fd) to `file_mode()`."""
  if isinstance(target, int):
    os.fchmod(target, file_mode())
  else:
    os.chmod(os.fspath(target), file_mode())
