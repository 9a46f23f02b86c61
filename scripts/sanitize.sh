#!/usr/bin/env bash
# Build afd_trt._C with AddressSanitizer + UndefinedBehaviorSanitizer (+ float-cast-overflow) into
# build/asan, put it into a throwaway copy of the package (build/asan/pkg/afd_trt; the installed
# and the dev package are not touched) and run the op tests against that copy.
# Any sanitizer report aborts the test process, so the script exits non-zero.
#   scripts/sanitize.sh [extra pytest args]
# VENV=path picks the Python environment (default .venv), as scripts/test.sh does; it needs the
# test dependencies (pytest, hypothesis, torch, opencv) and pybind11 (installed here if missing).
# Needs GCC (g++ with libasan/libubsan) and CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$(realpath -m "${VENV:-.venv}")
py="$venv/bin/python"
start=$SECONDS

if ! "$py" -c 'import pybind11' 2>/dev/null; then
  echo "sanitize: pybind11 missing in $venv, installing it (build dependency)"
  "$venv/bin/pip" install -q "pybind11>=2.12"
fi
pbdir=$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())')
cxx=${CXX:-g++}

# RelWithDebInfo at -O1 -g1 (line tables): file:line in reports, a quicker build than -O2 -g.
# -fno-sanitize-recover: UB aborts instead of
# printing and going on. float-cast-overflow (not part of GCC's "undefined"): NaN / out-of-range
# float -> int conversions are UB too.
build=build/asan
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_COMPILER="$cxx" \
  -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$pbdir" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$root/$build/out" \
  -DAFD_TRT_SANITIZE=address,undefined,float-cast-overflow \
  -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"

# Throwaway package copy: the .py files of afd_trt plus the sanitized _C, and configs/ beside it
# (afd_trt.config falls back to ../configs when afd_trt.configs is not a package).
pkg=$build/pkg
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r afd_trt "$pkg/afd_trt"
rm -f "$pkg"/afd_trt/_C*.so
find "$pkg" -name __pycache__ -type d -prune -exec rm -rf {} +
cp -r configs "$pkg/configs"
cp "$build"/out/_C*.so "$pkg/afd_trt/"

libasan=$("$cxx" -print-file-name=libasan.so)
libstdcxx=$("$cxx" -print-file-name=libstdc++.so)
if [ ! -e "$libasan" ] || [ "$libasan" = libasan.so ]; then
  echo "sanitize: libasan.so not found by $cxx" >&2
  exit 2
fi
# The ASan runtime must be the first library loaded (Python itself is not instrumented);
# libstdc++ next to it so that its operator new/delete interception sees one C++ runtime.
preload="$(realpath "$libasan"):$(realpath "$libstdcxx")"
# detect_leaks=0: LeakSanitizer would report CPython's and torch's intentional process-lifetime
# allocations (interned objects, static caches), which is noise, not our bugs.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_exit=1:strict_init_order=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$root/$pkg"
export PYTHONDONTWRITEBYTECODE=1

# Check that the sanitized copy is what imports (not the installed or the source-tree package).
got=$(LD_PRELOAD="$preload" "$py" -P -c 'import afd_trt._C as C; print(C.__file__)')
echo "sanitize: afd_trt._C = $got"
case "$got" in
  "$root/$pkg/afd_trt/"*) ;;
  *) echo "sanitize: expected the ASan build under $root/$pkg, got $got" >&2; exit 2 ;;
esac

# A one-hook pytest plugin that checks the same inside the test process, before any test runs.
cat >"$pkg/afd_asan_check.py" <<'PLUGIN'
import afd_trt._C


def pytest_sessionstart(session):
    where = afd_trt._C.__file__
    print(f"\nsanitize: tests import afd_trt._C from {where}")
    if "/build/asan/pkg/" not in where:
        raise SystemExit(f"sanitize: the tests would import {where}, not the ASan build")
PLUGIN

tests=(tests/test_ops_*.py)
[ -e tests/test_props_ops.py ] && tests+=(tests/test_props_ops.py)
# pytest via the venv's entry script (not `python -m pytest`, which would put the checkout first
# on sys.path); -p no:cacheprovider keeps the run read-only.
# In pytest-xdist workers (whole files per worker) when it is installed and there are CPUs to
# share; each worker process is the sanitized one (LD_PRELOAD is inherited, the plugin checks it).
cpus=$(nproc)
workers=${PYTEST_WORKERS:-$((cpus < 4 ? cpus : 4))}
xdist=()
if [ "$workers" -gt 1 ] && "$py" -c 'import xdist' 2>/dev/null; then
  # --max-worker-restart=0: a worker killed by a sanitizer report ends the run (restarted
  # workers with whole-file scheduling were seen to hang).
  xdist=(-n "$workers" --dist loadfile --max-worker-restart=0)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cpus / workers > 0 ? cpus / workers : 1))}
fi
set +e
LD_PRELOAD="$preload" "$venv/bin/pytest" -q -s -p no:cacheprovider -p afd_asan_check "${xdist[@]}" "${tests[@]}" "$@"
rc=$?
set -e
echo "sanitize: pytest exit code $rc, $((SECONDS - start)) s in all"
if [ $rc -ne 0 ]; then
  echo "sanitize: FAILED (a test failure, or a sanitizer report: look for 'ERROR: AddressSanitizer' / 'runtime error:' above)" >&2
fi
exit $rc
