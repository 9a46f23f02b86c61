#!/usr/bin/env bash
# The GPU session in one command (see docs/benchmarks.md, "Running the GPU checks"): builds the
# extension in place, runs every needs_cuda test, then afd-trt bench on the GPU against upstream
# (fp32, fp16, the image path on and off, CUDA graphs, nvJPEG, Faster R-CNN), memory over 10,000
# images (benchmarks/memory.py) and a bigger batch. Everything lands in $OUT (the device tool's
# folder; ./gpu-out elsewhere) as four files: gpu_check.log, needs_cuda.log, bench.jsonl and
# memory.json.
#
# Prepared here first by scripts/gpu_prepare.sh (the grid image and the oracle's wheel in .gpu/,
# which the device tool carries). Overrides for a dry run on a CPU machine:
#   DEVICE=cpu LOW_PRECISION=bf16 NUM_IMAGES=2 SIZE=320x192 BATCHES=2 BIG_BATCH= MEMORY_IMAGES=8 \
#     bash scripts/gpu_check.sh
# (there the --cuda-graphs runs are refused with exit 2, as they should be).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
device=${DEVICE:-cuda}
n=${NUM_IMAGES:-64}
size=${SIZE:-1280x720}
py=${PYTHON:-python3}
lp=${LOW_PRECISION:-fp16}
export PYTHONUNBUFFERED=1
# One deadline for the whole run, inside the device tool's 600 s per call: each step gets what is
# left (capped at its own limit) and is skipped when under a minute remains, so a slow step costs
# the runs after it, not the call's results.
deadline=$((SECONDS + ${BUDGET_SECONDS:-540}))
limit() {  # limit CAP: seconds for the next step, at most CAP; 0 when under 60 s remain
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 60 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
log="$out/gpu_check.log"
exec > >(tee -a "$log") 2>&1
tee_pid=$!
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) device=$device"
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv) || true

site=/tmp/afd_site
if ls .gpu/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --ignore-requires-python --no-compile --no-cache-dir --upgrade --target "$site" .gpu/*.whl ||
    exit 1
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export AFD_TRT_SHARED_DATA=${AFD_TRT_SHARED_DATA:-$PWD/.gpu}
export AFD_TRT_CACHE=/tmp/afd_cache
"$py" -c "import torch, torchvision, cv2; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__)"

echo "== build (in place)"
PYTHON="$py" timeout 300 bash scripts/dev_build.sh || exit 1

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== needs_cuda tests"
  # -v names each test as it starts; SIGINT at the limit lets pytest print its summary of what
  # ran; with pytest-timeout (on the GPU image) one hung test costs PER_TEST_SECONDS, not the rest
  per_test=()
  "$py" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout "${PER_TEST_SECONDS:-90}")
  timeout -s INT -k 20 "$(limit "${TEST_SECONDS:-240}")" "$py" -m pytest -v -p no:cacheprovider -m needs_cuda \
    -rfEs "${per_test[@]}" tests/ >"$out/needs_cuda.log" 2>&1
  echo "pytest exit $?"
  echo "passed: $(grep -c ' PASSED' "$out/needs_cuda.log")"
  tail -n 40 "$out/needs_cuda.log"
fi

echo "== bench"
weights=/tmp/afd_weights
[ -f "$weights/mmpose_anime-face_hrnetv2.pth" ] || "$py" -m afd_trt.cli --log-level WARNING make-test-weights "$weights" --seed 0 >/dev/null
jsonl="$out/bench.jsonl"
: >"$jsonl"
bench() {  # bench NAME ARGS...: one run (against upstream unless COMPARE=0), its JSON appended to bench.jsonl
  local name=$1 t
  shift
  t=$(limit "${BENCH_SECONDS:-150}")
  if [ "$t" = 0 ]; then
    echo "-- $name: skipped, under a minute of the run's budget left"
    return
  fi
  echo "-- $name (${t}s at most): $*"
  local compare=--compare-upstream
  [ "${COMPARE:-1}" = 0 ] && compare=
  if timeout "$t" "$py" -m afd_trt.cli --log-level WARNING bench --weights "$weights" \
    --grid "$AFD_TRT_SHARED_DATA/tadne_grid_3072.jpg" --num-images "$n" --size "$size" --device "$device" \
    --quiet $compare --json /tmp/afd_bench.json "$@"; then
    "$py" -c "import json,sys; r=json.load(open('/tmp/afd_bench.json')); r['run']=sys.argv[1]; print(json.dumps(r))" \
      "$name" >>"$jsonl"
  else
    echo "   $name failed or timed out"
  fi
}
for b in ${BATCHES:-16}; do
  bench "yolov3-fp32-b$b" --batch-size "$b"
  bench "yolov3-$lp-b$b" --batch-size "$b" --precision "$lp"
  bench "yolov3-$lp-b$b-host-path" --batch-size "$b" --precision "$lp" --device-pipeline off
  bench "yolov3-$lp-b$b-graphs-nvjpeg" --batch-size "$b" --precision "$lp" --cuda-graphs --jpeg-decoder torchvision
  bench "faster-rcnn-$lp-b$b" --batch-size "$b" --precision "$lp" --face-detector faster-rcnn
done
mem_n=${MEMORY_IMAGES:-10000}
echo "== memory over $mem_n images (benchmarks/memory.py)"
t=$(limit "${MEMORY_SECONDS:-120}")
if [ "$t" = 0 ]; then
  echo "-- skipped, under a minute of the run's budget left"
else
  timeout "$t" "$py" benchmarks/memory.py --weights "$weights" --device "$device" --precision "$lp" \
    --batch-size "${BATCHES%% *}" --num-images "$mem_n" --size "$size" \
    --grid "$AFD_TRT_SHARED_DATA/tadne_grid_3072.jpg" --every $((mem_n >= 40 ? mem_n / 20 : 1)) \
    --warmup $((mem_n / 10)) --max-seconds $((t - 40)) --json "$out/memory.json" 2>&1 |
    grep -v "^INFO benchmarks.memory: [0-9]* images, RSS" | tail -n 5
  echo "memory exit ${PIPESTATUS[0]}"
fi
big=${BIG_BATCH-32}
# throughput only: no upstream comparison (its ratio is in the runs above), no latency pass
[ -n "$big" ] && COMPARE=0 bench "yolov3-$lp-b$big-graphs-nvjpeg" --batch-size "$big" \
  --precision "$lp" --cuda-graphs --jpeg-decoder torchvision --skip-latency
echo "== done $(date -u +%FT%TZ); $(wc -l <"$jsonl") bench runs in $jsonl"
exec >&- 2>&-
wait "$tee_pid"  # the log complete before the call returns
