#!/usr/bin/env bash
# Build llama.cpp's own C++ `llama-server` for the benchmark (bench/run_bench.py,
# backend "llama-server").
#
# It is built from the very llama.cpp sources that the llama-cpp-python sdist
# vendors (vendor/llama.cpp), with the same CPU flags as the llama-cpp-python
# build this project uses, so that the node, in-process llama_cpp,
# llama_cpp.server and llama-server all run the same kernels.
#
# Idempotent: does nothing if bench/.build/llama-server already exists
# (pass --force to rebuild).  Takes about 4-5 minutes on 2 cores.
#
# Environment:
#   PYTHON   python with pip (default: .venv/bin/python in the repo root)
#   JOBS     parallel build jobs (default: 2)
#   LLAMA_CPP_PYTHON_VERSION  sdist version (default: 0.3.36, the installed one)
#   LLAMA_SERVER_BUILD_DIR    where to build (default: bench/.build)
#   LLAMA_SERVER_CMAKE_ARGS   the ggml flags (default: the explicit x86 CPU flags below;
#                             bench/cuda_bench.sh passes "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CUDA=ON")
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BUILD_DIR="${LLAMA_SERVER_BUILD_DIR:-$BENCH_DIR/.build}"
BIN="$BUILD_DIR/llama-server"
PYTHON="${PYTHON:-$REPO_DIR/.venv/bin/python}"
JOBS="${JOBS:-2}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

if [[ "${1:-}" == "--force" ]]; then
    rm -f "$BIN"
fi

if [[ -x "$BIN" ]]; then
    echo "llama-server already built: $BIN"
    exit 0
fi

for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "error: '$tool' not found" >&2; exit 1; }
done

mkdir -p "$BUILD_DIR/sdist"
SDIST="$BUILD_DIR/sdist/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    echo "==> downloading llama-cpp-python==$VERSION sdist"
    "$PYTHON" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$BUILD_DIR/sdist"
fi

SRC="$BUILD_DIR/sdist/llama_cpp_python-$VERSION"
if [[ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]]; then
    echo "==> extracting $SDIST"
    tar -xzf "$SDIST" -C "$BUILD_DIR/sdist"
fi
LLAMA_SRC="$SRC/vendor/llama.cpp"

GENERATOR=()
if command -v ninja >/dev/null; then
    GENERATOR=(-G Ninja)
fi

# Notes on options (checked against the vendored CMakeLists.txt):
#  * LLAMA_CURL is deprecated and ignored there; HTTPS support is LLAMA_OPENSSL.
#  * LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF: no web UI, no download.
#  * GGML_NATIVE=OFF: -march=native crashes on this machine; the explicit ISA
#    flags below are the ones the project's llama-cpp-python build uses.
GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON)
if [[ -n "${LLAMA_SERVER_CMAKE_ARGS:-}" ]]; then
    read -r -a GGML_FLAGS <<< "$LLAMA_SERVER_CMAKE_ARGS"
fi
echo "==> configuring $LLAMA_SRC (${GGML_FLAGS[*]})"
cmake -S "$LLAMA_SRC" -B "$BUILD_DIR/cmake" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    "${GGML_FLAGS[@]}" \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF

echo "==> building llama-server (-j$JOBS)"
cmake --build "$BUILD_DIR/cmake" --config Release --target llama-server -j "$JOBS"

FOUND="$(find "$BUILD_DIR/cmake" -type f -name llama-server -perm -u+x | head -n 1)"
if [[ -z "$FOUND" ]]; then
    echo "error: llama-server binary not found under $BUILD_DIR/cmake" >&2
    exit 1
fi
cp "$FOUND" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "==> built $BIN"
"$BIN" --version 2>&1 | head -n 5 || true
