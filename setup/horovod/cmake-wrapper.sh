#!/usr/bin/env bash
# cmake-wrapper.sh: the `cmake` Horovod's setup.py runs (named by HOROVOD_CMAKE during our build).
# It adds our project-include file (fixes.cmake, beside this script) to the configure call and
# passes every other call (`cmake --build .`, `cmake --version`) through unchanged. Horovod's
# own sources are never edited.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmake_bin="${HOROVOD_RECIPES_REAL_CMAKE:-/usr/bin/cmake}"
case "${1:-}" in
  --build|--version|--install|-E|-P|--help) exec "$cmake_bin" "$@" ;;
esac
exec "$cmake_bin" "-DCMAKE_PROJECT_INCLUDE=${here}/fixes.cmake" "$@"
