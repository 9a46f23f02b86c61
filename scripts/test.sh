#!/usr/bin/env bash
# Run the checks and the test suite against the installed package in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
"$venv/bin/ruff" check afd_trt tests build_engines benchmarks
"$venv/bin/mypy"
# pytest (not `python -m pytest`): the installed afd_trt is imported, not the source tree.
"$venv/bin/pytest" "$@"
