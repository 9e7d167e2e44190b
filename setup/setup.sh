#!/usr/bin/env bash
# setup.sh: the one idempotent setup step (`make setup`, CI and the Dockerfiles all run it).
#
# It installs Debian's Open MPI when missing, creates a virtual environment, installs the
# pinned frameworks from versions.env, builds Horovod from its PyPI sdist with the fixes in
# setup/horovod/ (or reuses a wheel built earlier against the same versions), installs this
# package, and checks that Horovod has PyTorch, TensorFlow, MPI and Gloo.
#
# Environment knobs:
#   VENV                     where the virtual environment goes (default: <repo>/.venv)
#   PYTHON                   the interpreter that creates it (default: python3)
#   HOROVOD_RECIPES_CACHE    where built Horovod wheels are kept (default: ~/.cache/horovod-recipes)
#   TORCH_INDEX_URL          an index for torch/torchvision, e.g. PyTorch's CPU wheel index
#   TORCH_VERSION, TORCHVISION_VERSION   override the pins (for CPU wheels of another release)
#   SETUP_SKIP_APT=1         never call apt-get (MPI must already be installed)
#
# On failure it prints one line, `setup: step '<name>' failed: <reason> (log: <file>)`, and
# exits non-zero.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Environment overrides win over the pins; remember them before sourcing versions.env.
_torch_override="${TORCH_VERSION:-}"
_torchvision_override="${TORCHVISION_VERSION:-}"
# shellcheck source=../versions.env
source "$ROOT/versions.env"
TORCH_VERSION="${_torch_override:-$TORCH_VERSION}"
TORCHVISION_VERSION="${_torchvision_override:-$TORCHVISION_VERSION}"

VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
CACHE="${HOROVOD_RECIPES_CACHE:-$HOME/.cache/horovod-recipes}"
LOGDIR="$ROOT/.setup-logs"
mkdir -p "$LOGDIR"

# step NAME COMMAND...: run a command with its output in $LOGDIR/NAME.log; on failure print one
# line naming the step and the last meaningful line of its log, then exit 1.
step() {
  local name="$1"; shift
  local log="$LOGDIR/$name.log"
  printf 'setup: %s ... ' "$name"
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    printf 'ok (%ss)\n' "$((SECONDS - t0))"
  else
    local why
    why="$(grep -v '^\s*$' "$log" | grep -iE 'error|fail|not found|denied|refus' | tail -n 1)"
    [ -n "$why" ] || why="$(grep -v '^\s*$' "$log" | tail -n 1)"
    printf 'FAILED\n'
    echo "setup: step '$name' failed: ${why:-no output} (log: $log)" >&2
    exit 1
  fi
}

check_python() {
  "$PYTHON" - "$PYTHON_MIN" <<'PY'
import sys
need = tuple(int(x) for x in sys.argv[1].split("."))
if sys.version_info[:2] < need:
    sys.exit(f"error: Python {sys.argv[1]}+ is needed, {sys.executable} is {sys.version.split()[0]}")
print(sys.version)
PY
}

install_mpi() {
  if command -v mpirun >/dev/null && command -v mpicxx >/dev/null; then
    mpirun --version | head -n 1
    return 0
  fi
  if [ "${SETUP_SKIP_APT:-0}" = 1 ]; then
    echo "error: mpirun/mpicxx not found and SETUP_SKIP_APT=1; install Open MPI (apt-get install $APT_PACKAGES)"
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: Open MPI missing; run as root or install: apt-get install $APT_PACKAGES"; return 1; }
    sudo="sudo -n"
  fi
  # shellcheck disable=SC2086
  $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $APT_PACKAGES
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || return 1
  fi
  "$VENV/bin/python" -m pip install --upgrade \
    "setuptools==$SETUPTOOLS_VERSION" "wheel==$WHEEL_VERSION" "packaging==$PACKAGING_VERSION"
}

pip_in_venv() { "$VENV/bin/python" -m pip "$@"; }

install_frameworks() {
  local torch_args=()
  [ -n "${TORCH_INDEX_URL:-}" ] && torch_args=(--index-url "$TORCH_INDEX_URL")
  pip_in_venv install "${torch_args[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" || return 1
  pip_in_venv install \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "$TENSORFLOW_PACKAGE==$TENSORFLOW_VERSION" "tf-keras==$TF_KERAS_VERSION" \
    "tensorboard==$TENSORBOARD_VERSION" "mpi4py==$MPI4PY_VERSION" \
    "numpy==$NUMPY_VERSION" "scikit-learn==$SCIKIT_LEARN_VERSION" "tqdm==$TQDM_VERSION" \
    "pyyaml==$PYYAML_VERSION" "cloudpickle==$CLOUDPICKLE_VERSION" "psutil==$PSUTIL_VERSION" \
    "pytest==$PYTEST_VERSION" "hypothesis==$HYPOTHESIS_VERSION" "ruff==$RUFF_VERSION"
}

# The key of a Horovod wheel: everything its binary depends on.
wheel_key() {
  "$VENV/bin/python" - "$HOROVOD_VERSION" "$HOROVOD_BUILD_CUDA_CC_LIST" <<'PY'
import hashlib, subprocess, sys, pathlib
import torch, tensorflow as tf
mpi = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
fixes = pathlib.Path("setup/horovod")
fix_hash = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(fixes.iterdir()))).hexdigest()[:12]
parts = [sys.argv[1], f"py{sys.version_info[0]}{sys.version_info[1]}", f"torch{torch.__version__}",
         f"tf{tf.__version__}", mpi, f"cc{sys.argv[2]}", f"fixes{fix_hash}"]
print("horovod-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16])
print("|".join(parts), file=sys.stderr)
PY
}

build_horovod_wheel() {
  local out="$1" work
  work="$(mktemp -d)"
  # The C++ standard torch's headers need (see setup/horovod/fixes.cmake, fix 1).
  local cxx_std
  cxx_std="$("$VENV/bin/python" -c 'import torch; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print(20 if v>=(2,14) else 17)')" || return 1
  # A CUDA build of torch makes Horovod compile its CUDA parts; it needs the toolkit's location
  # (torch otherwise guesses /usr/local from the nvcc wrapper) and a short list of archs.
  local cuda_env=()
  if "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then
      cuda_env=(CUDA_HOME=/usr/local/cuda HOROVOD_CUDA_HOME=/usr/local/cuda
                HOROVOD_BUILD_CUDA_CC_LIST="$HOROVOD_BUILD_CUDA_CC_LIST")
    else
      echo "torch is a CUDA build but no CUDA toolkit is at /usr/local/cuda: building Horovod for CPU"
    fi
  fi
  echo "building Horovod $HOROVOD_VERSION with C++$cxx_std ${cuda_env[*]}"
  env "${cuda_env[@]}" \
    HOROVOD_RECIPES_CXX_STD="$cxx_std" \
    HOROVOD_CMAKE="$ROOT/setup/horovod/cmake-wrapper.sh" \
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
    MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}" \
    PATH="$VENV/bin:$PATH" \
    "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps --no-binary horovod \
      --no-cache-dir -v -w "$work" "horovod==$HOROVOD_VERSION" || return 1
  mkdir -p "$out.tmp" && mv "$work"/horovod-*.whl "$out.tmp/" && rm -rf "$out" && mv "$out.tmp" "$out"
  rm -rf "$work"
}

install_horovod() {
  local key
  key="$(wheel_key)" || return 1
  local dir="$CACHE/wheels/$key"
  if ls "$dir"/horovod-*.whl >/dev/null 2>&1; then
    echo "reusing $dir"
  else
    build_horovod_wheel "$dir" || return 1
  fi
  pip_in_venv install --no-deps --force-reinstall "$dir"/horovod-*.whl
}

install_package() {
  pip_in_venv install --no-deps --no-build-isolation -e "$ROOT"
}

check_build() {
  local out
  out="$(PATH="$VENV/bin:$PATH" "$VENV/bin/horovodrun" --check-build 2>&1)" || { echo "$out"; return 1; }
  echo "$out"
  local need
  for need in PyTorch TensorFlow MPI Gloo; do
    grep -qE "\[X\] $need\b" <<<"$out" || { echo "error: horovodrun --check-build does not list $need"; return 1; }
  done
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" -c 'import horovod.torch, horovod.tensorflow, mpi4py.MPI'
}

stamp_value() {
  cat versions.env setup/setup.sh setup/horovod/* pyproject.toml | sha256sum | cut -c1-16
}

stamp="$VENV/.horovod-recipes-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(stamp_value)" ] \
   && command -v mpirun >/dev/null \
   && "$VENV/bin/python" -c 'import horovod.torch, horovod.tensorflow, common' >/dev/null 2>&1; then
  echo "setup: up to date ($VENV)"
  exit 0
fi

step python check_python
step mpi install_mpi
step venv make_venv
step frameworks install_frameworks
step horovod install_horovod
step package install_package
step check-build check_build
stamp_value >"$stamp"
grep -E '^\s*\[X\]|Available' "$LOGDIR/check-build.log" | sed 's/^/setup: /' | head -n 20
echo "setup: done; activate with: source $VENV/bin/activate"
