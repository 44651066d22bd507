"""The benchmark's fixed settings: paths, backends, the node configuration, sampling, targets."""

from __future__ import annotations

import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"
# bench/cuda_bench.sh builds a CUDA llama-server elsewhere and names it here.
LLAMA_SERVER_BIN = Path(os.environ.get("EDGEFLEET_BENCH_LLAMA_SERVER", str(BUILD_DIR / "llama-server")))
LOG_DIR = BUILD_DIR / "logs"
PROFILE_TEMPLATE = REPO_DIR / "firmware_profiles" / "x86-dev.toml"

BACKENDS = ("node", "inprocess", "llama_cpp.server", "llama-server", "raw")
LABELS = {
    "node": "node (gRPC)",
    "inprocess": "in-process Llama",
    "llama_cpp.server": "llama_cpp.server",
    "llama-server": "llama-server (C++)",
    "raw": "raw batched decode",
}

# One node configuration for every level, like llama-server -np 8: 8 slots x 2048 tokens.
SLOTS = 8
N_CTX_SLOT = 2048
N_BATCH = 512
THREADS = 2
# Layers offloaded to a GPU by every backend (the node's profile, in-process, raw, both servers):
# 0 on CPU machines; bench/cuda_bench.sh sets 99 (everything), as the Jetson profiles do.
GPU_LAYERS = int(os.environ.get("EDGEFLEET_BENCH_GPU_LAYERS", "0"))
QUEUE_LENGTH = 16
OVERHEAD_BYTES = 150 * 1024 * 1024  # the profile's overhead_mb (150 MiB)

# Sampling shared by every backend. Greedy, so top_p/top_k do not change the output.
TEMPERATURE = 0.0
TOP_P = 0.95
TOP_K = 40
SEED = 1234
REPEAT_PENALTY = 1.0  # llama_cpp.server's default is 1.1: state it for everyone

REQUEST_TIMEOUT_S = 180.0
START_TIMEOUT_S = 90.0

# Targets of issue 26's done-when (the summary block, bench/summary.py).
TARGET_NODE_VS_INPROCESS_C1 = 1.0
TARGET_NODE_VS_LLAMA_SERVER_C1 = 1.05
TARGET_NODE_VS_LLAMA_SERVER = 1.2  # at concurrency 4 and 8
TARGET_NODE_VS_RAW = 0.9  # the raw batched-decode ceiling, at concurrency 4 and 8
TARGET_TTFT_VS_INPROCESS_C1 = 1.0  # "TTFT no worse" (at most)
TARGET_MIXED_ADAPTERS = 0.8  # two adapters / one adapter, 4 streams
TARGET_PREFIX_RESTART = 1.10  # first answer after a restart / warm, TTFT (at most)
TARGET_SPECULATION_C1 = 1.5  # grounded answers, c=1, speculation on / off
# Earlier targets, still checked in the report.
TARGET_NODE_VS_LLAMA_CPP_SERVER_C4 = 1.60
TARGET_COLD_START_S = 2.0
