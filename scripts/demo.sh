#!/usr/bin/env bash
# The main job, offline: install, write SEEDED TEST WEIGHTS (they detect nothing real), make a
# demo image, detect faces and landmarks on it, and time the pipeline.
# With real weights instead: .venv/bin/afd-trt detect IMAGES -o faces.jsonl (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
out=runs/demo
mkdir -p "$out"
.venv/bin/afd-trt make-test-weights "$out/weights" --seed 0 >/dev/null
.venv/bin/python scripts/make_demo_image.py "$out/demo.jpg"
.venv/bin/afd-trt detect "$out/demo.jpg" -o "$out/faces.jsonl" --device cpu \
  --face-detector-checkpoint "$out/weights/mmdet_anime-face_yolov3.pth" \
  --landmark-checkpoint "$out/weights/mmpose_anime-face_hrnetv2.pth"
.venv/bin/python - "$out/faces.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    rec = json.loads(line)
    print(f"{rec['path']}: {rec.get('width')}x{rec.get('height')}, {len(rec.get('faces', []))} faces"
          " (seeded TEST weights: the boxes are not real faces)")
PY
# Timing of the whole pipeline on generated 1280x720 frames (same seeded test weights).
# The default (eager, bit-exact with upstream) and backend auto (OpenVINO / ONNX Runtime engines,
# built into the engine cache on first use; within tolerance of upstream, not bit-exact).
.venv/bin/afd-trt bench --weights "$out/weights" --num-images 4 --device cpu --json "$out/bench.json" >/dev/null
.venv/bin/afd-trt bench --weights "$out/weights" --num-images 4 --device cpu --backend auto \
  --json "$out/bench_auto.json" >/dev/null
.venv/bin/python - "$out/bench.json" "$out/bench_auto.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"bench, backend {r['backend']}: {r['afd_trt']['images_per_s']:.2f} images/s, {r['faces']} faces on "
          f"{r['images']} images of {r['size']} (CPU, seeded TEST weights; engines {r.get('engines')})")
PY
