#!/usr/bin/env bash
# Set up everything gmmkit needs on a Debian machine, idempotently:
#   1. system packages (OpenMPI, cmake, g++, Chromium for the browser test) through apt-get when missing;
#   2. .venv with Python 3.11 and the pinned Python stack (pyproject.toml extras cpu,lab,test);
#   3. Horovod 0.28.1 built from source with TensorFlow, MPI and Gloo (pip caches the wheel).
# A second run only checks and returns. Override the interpreter with PYTHON=..., the venv with VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
HOROVOD_VERSION=0.28.1

say() { printf '[gmmkit setup] %s\n' "$*"; }
die() { printf '[gmmkit setup] error: %s\n' "$*" >&2; exit 1; }

# --- 1. system packages -------------------------------------------------------------------
need_apt=()
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
command -v mpicc  >/dev/null || need_apt+=(libopenmpi-dev)
command -v cmake  >/dev/null || need_apt+=(cmake)
command -v g++    >/dev/null || need_apt+=(g++)
command -v chromium >/dev/null || need_apt+=(chromium)  # the browser test drives Debian's Chromium
command -v "$PYTHON" >/dev/null || need_apt+=(python3 python3-venv python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    die "missing system packages: ${need_apt[*]}. Install them with apt-get (as root) and run again."
  fi
  command -v apt-get >/dev/null || die "missing system packages: ${need_apt[*]}, and apt-get is not available on this machine. Install them by hand (or use environment.yml with conda)."
  say "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed; install ${need_apt[*]} by hand and run again"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" \
    || die "apt-get install ${need_apt[*]} failed; install them by hand and run again"
fi
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "gmmkit needs Python 3.11 (TensorFlow 2.15 + Horovod 0.28.1); $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11."

# --- 2. virtual environment ---------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=23" wheel "setuptools>=61"
say "installing gmmkit and its pinned dependencies into $VENV"
"${PIP[@]}" install -e ".[cpu,lab,test]"

# --- 3. Horovod -------------------------------------------------------------------------------
if ! "$VENV/bin/python" -c "import horovod, horovod.tensorflow as h; assert horovod.__version__ == '$HOROVOD_VERSION' and h.mpi_built() and h.gloo_built()" 2>/dev/null; then
  say "building Horovod $HOROVOD_VERSION with TensorFlow, MPI and Gloo (about 3 minutes the first time)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    "${PIP[@]}" install --no-build-isolation "horovod==$HOROVOD_VERSION" \
    || die "the Horovod build failed; see the pip output above (it needs libopenmpi-dev, cmake and g++)"
fi
"$VENV/bin/python" -c "import horovod.tensorflow as h; assert h.mpi_built(), 'Horovod was built without MPI'" \
  || die "Horovod is installed but not usable with MPI; remove it ('$VENV/bin/pip uninstall horovod') and run again"
touch "$VENV/.gmmkit-ready"
say "ready: $VENV ($("$VENV/bin/python" -c 'import tensorflow as tf, horovod; print("tensorflow", tf.__version__, "horovod", horovod.__version__)' 2>/dev/null))"
