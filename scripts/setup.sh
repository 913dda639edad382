#!/usr/bin/env bash
# Install voicepipe into .venv and fetch models. Idempotent: a second run only re-checks.
# The one install recipe: `make setup` runs it, and so does the GPU image (Dockerfile.gpu).
# Usage: scripts/setup.sh [PRESET ...]   (model presets of models/manifest.json; default: default)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
# llama.cpp's native build uses AMX on these Xeons and segfaults at the first decode; these portable
# flags are also what an image built on one host and run on another needs. The GPU image adds -DGGML_CUDA=on.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
EXTRAS="${VOICEPIPE_EXTRAS:-test}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.voicepipe-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$EXTRAS" ]; then
    echo "Installing voicepipe and its dependencies (llama-cpp-python compiles once, ~5 min; pip caches it)"
    "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
    echo "$EXTRAS" > "$stamp"
fi
if [ "${VOICEPIPE_SKIP_MODELS:-0}" != 1 ]; then
    presets=()
    for preset in "${@:-default}"; do presets+=(--preset "$preset"); done
    "$VENV/bin/python" scripts/download_models.py "${presets[@]}"
fi
