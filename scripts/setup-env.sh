#!/usr/bin/env bash
# Set up everything gmmkit needs on a Debian machine, idempotently:
#   1. system packages (OpenMPI, cmake, g++, Chromium for the browser test, iproute2/procps/SLURM/munge for
#      the emulated-host tests) through apt-get when missing;
#   2. .venv with Python 3.11 and the pinned Python stack (pyproject.toml extras cpu,lab,test);
#   3. Horovod 0.28.1 built from source with TensorFlow, MPI and Gloo, once per machine (a wheelhouse).
# A second run only checks and returns. Override the interpreter with PYTHON=..., the venv with VENV=...
#
# GMMKIT_LANE=current (make setup-current) sets up the second lane instead: .venv-current with the newest
# Python from 3.13 to 3.11 found here (PATH, then pyenv's versions), TensorFlow 2.21 with tf-keras 2.21
# and mpi4py, no Horovod (pyproject.toml extras current,lab,test). README "Two lanes".
set -euo pipefail
cd "$(dirname "$0")/.."
LANE=${GMMKIT_LANE:-horovod}
case "$LANE" in
  horovod) VENV=${VENV:-.venv}; PYTHON=${PYTHON:-python3.11} ;;
  current) VENV=${VENV:-.venv-current}; PYTHON=${PYTHON:-} ;;
  *) printf '[gmmkit setup] error: GMMKIT_LANE=%s: the lanes are horovod and current\n' "$LANE" >&2; exit 2 ;;
esac
HOROVOD_VERSION=0.28.1

say() { printf '[gmmkit setup %4ds] %s\n' "$SECONDS" "$*"; }
die() { printf '[gmmkit setup] error: %s\n' "$*" >&2; exit 1; }
# the lane's venv with $PYTHON (made once), a current pip in it, and PIP: the command that installs into it
make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q --retries 10 --timeout 60)
  "${PIP[@]}" install --upgrade "pip>=23" wheel "setuptools>=61"
}

# --- 1. system packages -------------------------------------------------------------------
need_apt=()
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
command -v mpicc  >/dev/null || need_apt+=(libopenmpi-dev)
command -v cmake  >/dev/null || need_apt+=(cmake)
command -v g++    >/dev/null || need_apt+=(g++)
command -v chromium >/dev/null || need_apt+=(chromium)  # the browser test drives Debian's Chromium
# emulated hosts and a real SLURM for the multi-host tests (tests/support/): network namespaces, veths
# and sysctls; SLURM 22.05 (slurmctld, slurmd, srun/sbatch/salloc) with munge for its authentication
have_sbin() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null; }  # not on a user's PATH
have_sbin ip        || need_apt+=(iproute2)
have_sbin sysctl    || need_apt+=(procps)
have_sbin slurmctld || need_apt+=(slurm-wlm)
have_sbin munged    || need_apt+=(munge)
[ "$LANE" = current ] || command -v "$PYTHON" >/dev/null || need_apt+=(python3 python3-venv python3-dev)
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

# --- the current lane: TensorFlow 2.21, tf-keras, mpi4py; no Horovod ---------------------------------
if [ "$LANE" = current ]; then
  supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; }
  if [ -z "$PYTHON" ]; then
    pyenv_root=$( (command -v pyenv >/dev/null && pyenv root) || echo "$HOME/.pyenv")
    for v in 3.13 3.12 3.11; do
      for candidate in "python$v" $(ls -d "$pyenv_root/versions/$v".*/bin/python$v 2>/dev/null | sort -rV); do
        if supported "$candidate"; then PYTHON=$candidate; break 2; fi
      done
    done
  fi
  [ -n "$PYTHON" ] && supported "$PYTHON" \
    || die "the current lane needs Python 3.11, 3.12 or 3.13 (TensorFlow 2.21); none found${PYTHON:+ ($PYTHON is not one)}. Set PYTHON=/path/to/python3.13."
  make_venv
  say "installing gmmkit, TensorFlow 2.21 and tf-keras into $VENV"
  "${PIP[@]}" install -e ".[current,lab,test]"
  ! "$VENV/bin/python" -c 'import horovod' 2>/dev/null \
    || die "$VENV has Horovod installed; the current lane runs without it: '$VENV/bin/pip uninstall horovod'"
  "$VENV/bin/python" -c 'from gmmkit.model.keras2 import keras; import mpi4py.MPI' \
    || die "gmmkit does not import in $VENV; see the error above"
  touch "$VENV/.gmmkit-ready"
  say "ready: $VENV ($("$VENV/bin/python" -c 'import sys, tensorflow as tf, tf_keras; print("python", sys.version.split()[0], "tensorflow", tf.__version__, "tf-keras", tf_keras.__version__)' 2>/dev/null))"
  exit 0
fi

command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "gmmkit needs Python 3.11 (TensorFlow 2.15 + Horovod 0.28.1); $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11."

# --- 2. virtual environment ---------------------------------------------------------------
make_venv
say "installing gmmkit and its pinned dependencies into $VENV"
"${PIP[@]}" install -e ".[cpu,lab,test]"

# --- 3. Horovod -------------------------------------------------------------------------------
# The source build takes minutes (much longer on a slow or busy machine), so the wheel is kept in a
# wheelhouse outside the repository, keyed by the TensorFlow version it was compiled against, and reused
# by every later clone and venv on this machine. GMMKIT_WHEELHOUSE moves it.
TF_VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null \
             || "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow"))')
WHEELHOUSE=${GMMKIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/gmmkit/wheels}/tf-$TF_VERSION
if ! "$VENV/bin/python" -c "import horovod, horovod.tensorflow as h; assert horovod.__version__ == '$HOROVOD_VERSION' and h.mpi_built() and h.gloo_built()" 2>/dev/null; then
  wheel=$(ls "$WHEELHOUSE"/horovod-$HOROVOD_VERSION-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    say "building Horovod $HOROVOD_VERSION against TensorFlow $TF_VERSION with MPI and Gloo (minutes; once per machine)"
    mkdir -p "$WHEELHOUSE"
    MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$WHEELHOUSE" "horovod==$HOROVOD_VERSION" \
      || die "the Horovod build failed; see the pip output above (it needs libopenmpi-dev, cmake and g++)"
    wheel=$(ls "$WHEELHOUSE"/horovod-$HOROVOD_VERSION-*.whl | head -n 1)
  fi
  say "installing $wheel"
  "${PIP[@]}" install --no-deps "$wheel" "cloudpickle" "psutil" "pyyaml" "packaging" "cffi>=1.4.0" \
    || die "installing $wheel failed; delete it to rebuild"
fi
"$VENV/bin/python" -c "import horovod.tensorflow as h; assert h.mpi_built(), 'Horovod was built without MPI'" \
  || die "Horovod is installed but not usable with MPI; remove it ('$VENV/bin/pip uninstall horovod') and run again"
touch "$VENV/.gmmkit-ready"
say "ready: $VENV ($("$VENV/bin/python" -c 'import tensorflow as tf, horovod; print("tensorflow", tf.__version__, "horovod", horovod.__version__)' 2>/dev/null))"
