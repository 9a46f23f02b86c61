#!/usr/bin/env bash
# Developer loop: build afd_trt._C with CMake into build/dev and copy it next to the sources,
# so `PYTHONPATH=$PWD pytest` runs against this tree (the copy is git-ignored).
# Usage: scripts/dev_build.sh [extra cmake -D args]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
pbdir=$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())')
cmake -S . -B build/dev -DCMAKE_BUILD_TYPE="${AFD_TRT_BUILD_TYPE:-Release}" -DPython_EXECUTABLE="$(command -v "$py")" \
  -Dpybind11_DIR="$pbdir" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/dev/out" "$@" >/dev/null
cmake --build build/dev -j "${JOBS:-$(nproc)}"
# Replaced by a rename, never rewritten in place: a process that has the old library loaded (a
# long benchmark) keeps its copy; cp over a mapped library crashed one with SIGSEGV.
for so in build/dev/out/_C*.so; do
  cp "$so" "afd_trt/.$(basename "$so").tmp"
  mv -f "afd_trt/.$(basename "$so").tmp" "afd_trt/$(basename "$so")"
done
echo "built $(ls afd_trt/_C*.so)"
