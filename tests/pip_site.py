"""A package a test needs but CI does not install (apache-beam, libtpu), installed once
from the package registry into its own directory, never into the test environment."""

import os
import shutil
import subprocess
import sys

import pytest


def private_site(pin: str, name: str, env_var: str, no_deps: bool = False) -> str:
  """The directory holding `pin` (`$env_var`, else ~/.cache/growjax-tests/`name`),
  installed atomically: into a `.partial` directory renamed into place when complete,
  so a killed install or a second process never leaves a half-installed site. Skips
  the test when the registry cannot be reached."""
  site = os.environ.get(env_var) or os.path.join(
      os.path.expanduser("~"), ".cache", "growjax-tests", name)
  if os.path.isdir(site):
    return site
  partial = f"{site}.partial-{os.getpid()}"
  out = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        *(["--no-deps"] if no_deps else []), "--disable-pip-version-check",
                        "--target", partial, pin], capture_output=True, text=True, check=False)
  if out.returncode != 0:
    shutil.rmtree(partial, ignore_errors=True)   # ours, half-installed: leave no debris
    pytest.skip(f"could not install {pin} into {partial}: {out.stderr.strip()[-500:]}")
  os.makedirs(os.path.dirname(site), exist_ok=True)
  try:
    os.rename(partial, site)
  except OSError:  # another process installed it first: use theirs, drop ours
    if not os.path.isdir(site):
      raise
    shutil.rmtree(partial, ignore_errors=True)
  return site
