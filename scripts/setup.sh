#!/usr/bin/env bash
# Install voicepipe into .venv and fetch models. Idempotent: a second run only re-checks.
# The one install recipe: `make setup` runs it, and so does the GPU image (Dockerfile.gpu, VOICEPIPE_GPU=1).
# Usage: scripts/setup.sh [PRESET ...]   (model presets of models/manifest.json; default: default)
# Environment: PYTHON, VENV, VOICEPIPE_EXTRAS (default test), VOICEPIPE_GPU=1 (CUDA builds),
#              VOICEPIPE_SKIP_MODELS=1 (install only; the image mounts its models).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${VOICEPIPE_EXTRAS-test}"  # set and empty: no extras
GPU="${VOICEPIPE_GPU:-0}"
# llama.cpp's native build uses AMX on these Xeons and segfaults at the first decode; these portable
# flags are also what an image built on one host and run on another needs. Without OpenMP, ggml uses its own
# threads: with OpenMP, once two threads had run llama.cpp (two model instances, or a load and a turn on
# different threads) libgomp throttled its spinning and every barrier slept; measured on 2 cores, an 18-token
# prompt took 105-130 ms instead of 75-80 ms.
PORTABLE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF"
PIP_OPTIONS=(--quiet)
if [ "$GPU" = 1 ]; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on $PORTABLE}"
    # pip's wheel cache does not key on CMAKE_ARGS: a cached CPU build would be reused silently.
    PIP_OPTIONS+=(--no-cache-dir)
else
    export CMAKE_ARGS="${CMAKE_ARGS:-$PORTABLE}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.voicepipe-installed"
wanted="extras=$EXTRAS gpu=$GPU"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing voicepipe and its dependencies (llama-cpp-python compiles once, ~5 min; pip caches it)"
    "$VENV/bin/python" -m pip install "${PIP_OPTIONS[@]}" -e ".${EXTRAS:+[$EXTRAS]}"
    # pip's wheel cache does not key on CMAKE_ARGS: a llama.cpp wheel cached from older flags (OpenMP) would be
    # reused silently, so the build is checked, and rebuilt if it is one. (GPU builds skip the cache; and with
    # no CUDA driver in an image build, the CUDA build cannot be imported there.)
    if [ "$GPU" != 1 ] && "$VENV/bin/python" -c 'import llama_cpp, sys; sys.exit("OPENMP = 1" not in llama_cpp.llama_print_system_info().decode())'; then
        echo "Rebuilding llama-cpp-python without OpenMP (the cached wheel has it; ~5 min)"
        "$VENV/bin/python" -m pip cache remove llama_cpp_python >/dev/null || true
        "$VENV/bin/python" -m pip install "${PIP_OPTIONS[@]}" --force-reinstall --no-deps \
            "llama-cpp-python==$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
    fi
    if [ "$GPU" = 1 ]; then
        # Piper (and Silero) run on onnxruntime; the GPU build replaces the CPU one (same module name).
        "$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime
        "$VENV/bin/python" -m pip install "${PIP_OPTIONS[@]}" "onnxruntime-gpu>=1.18,<2"
    fi
    echo "$wanted" > "$stamp"
fi
if [ "${VOICEPIPE_SKIP_MODELS:-0}" != 1 ]; then
    presets=()
    for preset in "${@:-default}"; do presets+=(--preset "$preset"); done
    "$VENV/bin/python" scripts/download_models.py "${presets[@]}"
fi
