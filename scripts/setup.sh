#!/usr/bin/env bash
# Install voicepipe into .venv and fetch the default models. Idempotent: a second run only re-checks.
# The one install recipe: `make setup` runs it, and so should any image build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
# llama.cpp's native build uses AMX on these Xeons and segfaults at the first decode; these portable
# flags are also what an image built on one host and run on another needs. Add -DGGML_CUDA=on for GPUs.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.voicepipe-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "Installing voicepipe and its dependencies (llama-cpp-python compiles once, ~5 min; pip caches it)"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    touch "$stamp"
fi
"$VENV/bin/python" scripts/download_models.py ${VOICEPIPE_MODEL_PRESET:+--preset "$VOICEPIPE_MODEL_PRESET"}
