#!/usr/bin/env bash
# cmake-wrapper.sh: the `cmake` Horovod's setup.py runs (named by HOROVOD_CMAKE during our build).
# It adds our project-include file (fixes.cmake, beside this script) to the configure call and
# passes every other call (`cmake --build .`, `cmake --version`) through unchanged. Horovod's
# own sources are never edited.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The real cmake: HOROVOD_RECIPES_REAL_CMAKE, else Debian's, else the first on PATH (PyPI's).
cmake_bin="${HOROVOD_RECIPES_REAL_CMAKE:-}"
if [ -z "$cmake_bin" ]; then
  if [ -x /usr/bin/cmake ]; then cmake_bin=/usr/bin/cmake; else cmake_bin="$(command -v cmake)"; fi
fi
case "${1:-}" in
  --build|--version|--install|-E|-P|--help) exec "$cmake_bin" "$@" ;;
esac
extra=()
# CMake 4 refuses the cmake_minimum_required(<3.5) of Horovod's bundled third-party projects
# (gloo); CMAKE_POLICY_VERSION_MINIMUM is CMake 4's own switch to accept them.
major="$("$cmake_bin" --version | head -n 1 | grep -oE '[0-9]+' | head -n 1)"
[ "${major:-3}" -ge 4 ] && extra+=("-DCMAKE_POLICY_VERSION_MINIMUM=3.5")
exec "$cmake_bin" "-DCMAKE_PROJECT_INCLUDE=${here}/fixes.cmake" "${extra[@]}" "$@"
