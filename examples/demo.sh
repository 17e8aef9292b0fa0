#!/usr/bin/env bash
# The guide's three sessions on examples/, offline (scratch base), then an answer from the ONNX model.
# Usage: bash examples/demo.sh [PYTHON]   (make demo passes the project's .venv python)
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
OUT=demo  # git-ignored; started afresh on every demo run
MODEL=$OUT/trained_model
ONNX=$OUT/onnx_model
rm -rf "$OUT"
export PYTHONIOENCODING=${PYTHONIOENCODING:-utf-8}

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$PY" main.py validate --data-file examples/programming_basics.json
step "$PY" main.py pipeline --data-file examples/programming_basics.json --model-name scratch --epochs 8 \
  --output-dir "$MODEL" --onnx-output "$ONNX"
step "$PY" main.py pipeline --data-file examples/web_development.json --epochs 4 \
  --output-dir "$MODEL" --onnx-output "$ONNX"
step "$PY" main.py pipeline --data-file examples/databases.json --epochs 4 \
  --output-dir "$MODEL" --onnx-output "$ONNX"
step "$PY" main.py history --output-dir "$MODEL"
step "$PY" main.py generate --onnx-output "$ONNX" --prompt "What is a variable in programming?" --max-new-tokens 48
