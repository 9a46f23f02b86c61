#!/usr/bin/env bash
# Fuzz every native op with its atheris harness (tests/fuzz/fuzz_<op>.py) for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_OP]        (default 20)
# A finding (an exception other than ValueError/TypeError, a failed result check, a crash of the
# native code, a timeout or running out of the memory limit) makes the script exit non-zero; the
# input that triggered it is saved as build/fuzz/<op>/crash-* (replay: python <harness> <file>).
# VENV=path picks the Python environment (default .venv; afd_trt must be importable from it, e.g.
# installed there or through PYTHONPATH). atheris is pip-installed into it when it cannot be
# imported. The native code is not built with libFuzzer instrumentation (that needs clang), so the
# fuzzer is guided by Python-level coverage only; run scripts/sanitize.sh for memory errors.
# FUZZ_SEED sets libFuzzer's seed (default 1); FUZZ_OPS restricts the ops (space separated);
# FUZZ_JOBS harnesses run at a time (default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
venv=$(realpath -m "${VENV:-.venv}")
py="$venv/bin/python"
if ! "$py" -c 'import atheris' 2>/dev/null; then
  echo "fuzz: atheris not importable from $venv, installing it there"
  "$venv/bin/pip" install -q atheris
fi
(cd / && "$py" -c 'import afd_trt._C as C; print("fuzz: afd_trt._C from", C.__file__)')

ops=${FUZZ_OPS:-"nms yolo_postprocess rpn_proposals rcnn_postprocess roi_align multilevel_roi_align warp_crops merge_flip decode_heatmaps"}
out=build/fuzz
mkdir -p "$out"
jobs=${FUZZ_JOBS:-$(nproc)}
start=$SECONDS

# One op: its harness for $secs seconds; "<rc> <line>" goes to $out/<op>/result.
fuzz_op() {
  local op=$1 harness=tests/fuzz/fuzz_$1.py log=$out/$1/log.txt t0=$SECONDS rc runs
  mkdir -p "$out/$op/corpus"
  # -len_control=0: inputs up to -max_len right away (arrays of a few thousand elements);
  # -timeout: one input running longer is a finding (a hang); -rss_limit_mb: so is a memory blowup.
  set +e
  "$py" "$harness" "$out/$op/corpus" -max_total_time="$secs" -seed="${FUZZ_SEED:-1}" -max_len=8192 \
    -len_control=0 -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$out/$op/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -oE 'Done [0-9]+ (runs )?in' "$log" | grep -oE '[0-9]+' | tail -1 || true)
  [ -n "$runs" ] || runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  printf '%d %-22s %10s execs in %4d s  rc=%d\n' "$rc" "$op" "${runs:-?}" $((SECONDS - t0)) "$rc" >"$out/$op/result"
}

for op in $ops; do
  [ -f "tests/fuzz/fuzz_$op.py" ] || { echo "fuzz: no harness tests/fuzz/fuzz_$op.py" >&2; exit 2; }
  rm -f "$out/$op/result"
done
# $jobs harnesses at a time (each is one single-threaded Python process).
for op in $ops; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_op "$op" &
done
wait

failed=()
summary=()
for op in $ops; do
  read -r rc line <"$out/$op/result" || { rc=1; line="$op: no result (the harness runner died)"; }
  echo "fuzz: $line"
  summary+=("$line")
  if [ "$rc" -ne 0 ]; then
    failed+=("$op")
    echo "----- $op: finding (log $out/$op/log.txt) -----" >&2
    grep -v -E '^#[0-9]+|^INFO:|^\s*$' "$out/$op/log.txt" | tail -40 >&2
  fi
done
echo "fuzz: summary ($((SECONDS - start)) s)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: FINDINGS in: ${failed[*]} (inputs under $out/<op>/crash-*)" >&2
  exit 1
fi
echo "fuzz: no findings"
