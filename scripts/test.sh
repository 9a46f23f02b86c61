#!/usr/bin/env bash
# Run the checks and the test suite against the installed package in .venv.
#   scripts/test.sh [pytest args]
# The suite runs in PYTEST_WORKERS processes (pytest-xdist, whole files per worker so that module
# fixtures are built once; default: the CPUs, at most 4; 0 = in this process), each with an equal
# share of the CPUs as its torch/OpenMP threads. Passing -n yourself overrides this.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
"$venv/bin/ruff" check afd_trt tests build_engines benchmarks
"$venv/bin/mypy"
cpus=$(nproc)
workers=${PYTEST_WORKERS:-$((cpus < 4 ? cpus : 4))}
xdist=()
case " $* " in
  *" -n "* | *" -n"[0-9]* | *" --numprocesses"*) ;;
  *) if [ "$workers" -gt 1 ]; then
       # A crashed worker fails the run instead of being restarted (restarts under whole-file
       # scheduling were seen to hang).
       xdist=(-n "$workers" --dist loadfile --max-worker-restart=0)
       export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cpus / workers > 0 ? cpus / workers : 1))}
     fi ;;
esac
# pytest (not `python -m pytest`): the installed afd_trt is imported, not the source tree.
"$venv/bin/pytest" "${xdist[@]}" "$@"
