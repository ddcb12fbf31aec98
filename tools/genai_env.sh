#!/usr/bin/env bash
# A venv of its own for ONNX Runtime GenAI's model builder (it needs transformers 5.x and onnx-ir, which the
# project's venv pins differently): .venv-genai. Then, e.g.:
#   .venv-genai/bin/python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT_DIR -p fp32 -e cpu
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-genai
.venv-genai/bin/python -m pip install -q --upgrade pip
.venv-genai/bin/python -m pip install -q torch==2.14.1
.venv-genai/bin/python -m pip install -q "onnxruntime-genai==0.18.0" "transformers>=5" onnx-ir onnx onnxruntime gguf accelerate
echo ".venv-genai ready: $(.venv-genai/bin/python -c 'import onnxruntime_genai as og; print(og.__version__)')"
