#!/usr/bin/env bash
# Installs growjax's dependencies that the GPU machine's image lacks from wheels carried
# in .whl/ (made here with `pip download --no-deps`; the device README says how), into
# /tmp/site, each only where its distribution is not importable already, and prints the
# PYTHONPATH to use:   export PYTHONPATH=$(bash benchmarks/device_deps.sh):$PWD
set -u
SITE="${SITE:-/tmp/site}"
mkdir -p "$SITE"
python3 - "$SITE" <<'PY' >&2
import glob, importlib.metadata as md, subprocess, sys
site = sys.argv[1]
missing = []
for whl in sorted(glob.glob(".whl/*.whl")):
  dist = whl.split("/")[-1].split("-")[0]
  try:
    md.version(dist)
  except md.PackageNotFoundError:
    missing.append(whl)
print("device_deps: installing", " ".join(w.split("/")[-1].split("-")[0] for w in missing))
if missing:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                  "--no-compile", "--disable-pip-version-check", "--target", site, *missing],
                 check=True)
PY
echo "$SITE"
