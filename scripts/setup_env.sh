#!/usr/bin/env bash
# Create .venv and install afd_trt into it, on a bare machine.
#   scripts/setup_env.sh          runtime (torch, numpy, OpenCV, safetensors, afd_trt, and ONNX +
#                                 OpenVINO for the fast CPU backend)
#   scripts/setup_env.sh test     + test tools and the upstream oracle (anime-face-detector 0.1.0)
# VENV=path overrides the location (default: .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-runtime}
venv=$(realpath -m "${VENV:-.venv}")
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# torch 2.14.1 / torchvision 0.29.1 are the releases that lie on these machines' disk
# (pip is capped there); elsewhere any torch >= 2.2 works.
"${pip[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
if [ "$mode" = test ]; then
  "${pip[@]}" install -q ".[test,onnx,openvino,dev]"
  # The oracle declares Python >= 3.12 but runs on 3.11; its own deps are in our [test] extra.
  "${pip[@]}" install -q --no-deps --ignore-requires-python "anime-face-detector==0.1.0"
else
  "${pip[@]}" install -q ".[openvino]"
fi
# From outside the checkout, so the installed package (with its compiled _C) is what imports.
(cd / && "$venv/bin/python" -c "import afd_trt, afd_trt._C as C; print('afd_trt', afd_trt.__version__, 'native ops', C.__version__)")
