#!/usr/bin/env bash
# Run here before a GPU session: puts what scripts/gpu_check.sh needs and the GPU machine lacks
# into .gpu/ (git-ignored through .git/info/exclude; the device tool carries it): the shared
# test grid and the upstream oracle's wheel (69 kB, pure Python).
#   bash scripts/gpu_prepare.sh   then   device run: command "bash scripts/gpu_check.sh", carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
mkdir -p .gpu
cp "${AFD_TRT_SHARED_DATA:-../shared/data}/tadne_grid_3072.jpg" .gpu/
py=${PYTHON:-python3}
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu "anime-face-detector==0.1.0"
ls -la .gpu
