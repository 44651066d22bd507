#!/usr/bin/env bash
# Issue 26's benchmark on an NVIDIA GPU: the Jetson profiles' CUDA build, one script.
#
#   bench/cuda_bench.sh                 # build (once) and run: c=1,4,8, every section
#   bench/cuda_bench.sh --only node,raw # extra arguments go to bench/run_bench.py
#
# What it does, wherever `nvidia-smi` sees a GPU (a Jetson Orin, a desktop or data-centre card):
#   1. scripts/setup with EDGEFLEET_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CUDA=ON":
#      llama-cpp-python built with CUDA into .venv (setup keys its wheel cache by these flags, so
#      the CPU build stays cached beside it);
#   2. bench/setup_llama_server.sh with the same flags into bench/.build-cuda: llama.cpp's own
#      llama-server from the very sources llama-cpp-python vendors, with CUDA;
#   3. checks that the library offloads (llama_supports_gpu_offload) and that the GPU is seen;
#   4. bench/run_bench.py with every layer on the GPU (EDGEFLEET_BENCH_GPU_LAYERS=99, as the Jetson
#      profiles' gpu_layers): node / in-process / llama-server / raw ceiling at c=1,4,8, the
#      sections (mixed adapters, prefix after restart, KV type, speculation), and the summary of
#      ratios against issue 26's targets. Results land in bench/results/cuda/.
#
# Needs: the CUDA toolkit (nvcc on PATH or in /usr/local/cuda/bin; JetPack ships it), cmake, a
# C++ compiler, and the network for the first setup (pip, Debian packages).
# Environment: CUDA_ARCH (e.g. 87 for Orin, 90 for H100; default: what the build detects),
# JOBS (parallel build jobs, default: the number of cores).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

say() { printf 'cuda_bench: %s\n' "$*"; }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    # Jetsons have no nvidia-smi; tegrastats and /dev/nvhost-* say there is a GPU.
    if [[ ! -e /dev/nvhost-ctrl-gpu && ! -e /dev/nvgpu/igpu0/ctrl ]]; then
        say "no NVIDIA GPU here (nvidia-smi sees none, no Jetson GPU device): nothing to measure"
        exit 2
    fi
fi
if ! command -v nvcc >/dev/null; then
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then
        export PATH=/usr/local/cuda/bin:$PATH
    else
        say "the CUDA toolkit (nvcc) is missing: install it (JetPack on a Jetson, cuda-toolkit elsewhere)"
        exit 2
    fi
fi
nvidia-smi -L 2>/dev/null || true
nvcc --version | tail -n 1

FLAGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CUDA=ON"
if [[ -n "${CUDA_ARCH:-}" ]]; then
    FLAGS="$FLAGS -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH"
fi
export JOBS=${JOBS:-$(nproc)}

say "1/4 llama-cpp-python with CUDA ($FLAGS)"
EDGEFLEET_CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS scripts/setup

say "2/4 llama-server with CUDA"
LLAMA_SERVER_BUILD_DIR="$ROOT/bench/.build-cuda" LLAMA_SERVER_CMAKE_ARGS="$FLAGS" bench/setup_llama_server.sh

say "3/4 checking the offload"
.venv/bin/python - <<'EOF'
import sys

import llama_cpp

if not llama_cpp.llama_supports_gpu_offload():
    sys.exit("cuda_bench: this llama-cpp-python build cannot offload to a GPU (was it built with -DGGML_CUDA=ON?)")
print("cuda_bench: llama-cpp-python offloads to the GPU")
EOF

say "4/4 the benchmark, every layer on the GPU"
export EDGEFLEET_BENCH_GPU_LAYERS=99
export EDGEFLEET_BENCH_LLAMA_SERVER="$ROOT/bench/.build-cuda/llama-server"
exec .venv/bin/python bench/run_bench.py --concurrency 1,4,8 --sections all --out bench/results/cuda "$@"
