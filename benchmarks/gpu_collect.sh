#!/usr/bin/env bash
# GPU collection benchmark for a lent H100/H200, in one call of under 8 minutes (issue 14, item 6):
#   1. build llama.cpp's llama-batched-bench (CUDA, sm_90 only, from the llama.cpp vendored in the
#      llama-cpp-python 0.3.36 sdist) and llama-cpp-python itself with CUDA, into a venv layered on the
#      project's (the GPU machine has no network: the sdist and build tools come from a wheelhouse);
#   2. collect a few questions x 64 branches on a random-weight Qwen3-0.6B-shaped model (f16, built here)
#      with autotts's engine, all layers on the GPU, probes every 500 tokens;
#   3. run llama-batched-bench at the same concurrency and context and print both aggregate decode rates.
#
# Usage (repository root, on the GPU machine):
#   WHEELHOUSE=shared/wheelhouse OUT=/tmp/gpu-bench benchmarks/gpu_collect.sh
# Prepare the wheelhouse once, on a machine with network:
#   pip download --no-binary llama-cpp-python llama-cpp-python==0.3.36 scikit-build-core cmake ninja \
#       pathspec packaging -d shared/wheelhouse
# Environment: WHEELHOUSE (required), OUT (results; default /tmp/gpu-bench), WIDTHS (default 64),
#   QUESTIONS (default 3), TOKENS (thinking tokens per branch, default 2000), ARCH (CUDA arch, default 90),
#   JOBS (default: all cores). Results: $OUT/gpu_collect.json and the table on stdout.
# Until this has run on a lent GPU, the README's GPU figure stays marked pending.
set -euo pipefail
: "${WHEELHOUSE:?set WHEELHOUSE to a folder holding the llama-cpp-python 0.3.36 sdist and its build tools}"
OUT=${OUT:-/tmp/gpu-bench}; WIDTHS=${WIDTHS:-64}; QUESTIONS=${QUESTIONS:-3}; TOKENS=${TOKENS:-2000}
ARCH=${ARCH:-90}; JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*" >&2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

sdist=$(ls "$WHEELHOUSE"/llama_cpp_python-0.3.36*.tar.gz | head -1)
src="$OUT/src"; rm -rf "$src"; mkdir -p "$src"; tar xzf "$sdist" -C "$src" --strip-components 1

stamp "building llama-batched-bench (CUDA sm_$ARCH) and llama-cpp-python (CUDA) side by side"
( cmake -S "$src/vendor/llama.cpp" -B "$OUT/bb" -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >"$OUT/bb-cmake.log" 2>&1 &&
  cmake --build "$OUT/bb" --target llama-batched-bench -j "$JOBS" >"$OUT/bb-build.log" 2>&1 ) &
bb_pid=$!
python -m venv --system-site-packages "$OUT/venv"
"$OUT/venv/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" scikit-build-core cmake ninja >"$OUT/tools.log" 2>&1 || true
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
  "$OUT/venv/bin/pip" install -q --no-deps --no-index --find-links "$WHEELHOUSE" --no-build-isolation \
  --force-reinstall "$sdist" >"$OUT/llama-build.log" 2>&1
wait "$bb_pid"
stamp "builds done"

"$OUT/venv/bin/python" benchmarks/bench_collect.py --n-gpu-layers -1 --parallel "$WIDTHS" --questions "$QUESTIONS" \
  --tokens "$TOKENS" --interval 500 --probe-tokens 8 --answer-tokens 8 \
  --batched-bench "$OUT/bb/bin/llama-batched-bench" --json "$OUT/gpu_collect.json"
stamp "done"
