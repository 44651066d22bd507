"""What other busy processes on the device do to the node's decode speed, by compute thread count.

ggml's CPU threads (the build has OpenMP off) wait for each other at a barrier after every graph
node, spinning: when another process holds one of the cores, a thread waits at each barrier
until the scheduler gives the missing peer its turn again. This script starts a node
(`edgefleet-node serve --profile x86-dev --threads T`) for T in `--threads`, and with B busy
processes beside it (pure spin loops, `--busy`), measures total tokens/s of C concurrent
greedy streams (`--concurrency`) over gRPC. Prints one line per case and each case's ratio to
the same thread count on a quiet machine.

    .venv/bin/python bench/thread_contention.py [--threads 1,2] [--busy 0,1] [--concurrency 1,4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

PROMPT = "Write a short maintenance note about pump P-{i}: bearings, seals, vibration."


def throughput(stub: pb_grpc.InferenceStub, concurrency: int, max_tokens: int) -> float:
    """Total completion tokens per second of `concurrency` simultaneous greedy streams."""
    tokens = [0] * concurrency

    def one(i: int) -> None:
        req = pb.GenerateRequest(prompt=PROMPT.format(i=i), max_tokens=max_tokens, temperature=0, seed=1)
        for chunk in stub.Generate(req, timeout=600):
            if chunk.HasField("usage"):
                tokens[i] = chunk.usage.completion_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens) / (time.perf_counter() - start)


def env(threads: int) -> dict[str, str]:
    # Every stream must reach the engine: a repeated greedy request would come from the response cache.
    return {"EDGEFLEET_THREADS": str(threads), "EDGEFLEET_RESPONSE_CACHE": "false"}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="compute thread counts (default 1,2)")
    ap.add_argument("--busy", default="0,1", help="busy processes beside the node (default 0,1)")
    ap.add_argument("--concurrency", default="1,4", help="concurrent streams (default 1,4)")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion tokens per stream (default 64)")
    ap.add_argument("--passes", type=int, default=2, help="measurements of each case, printed each (default 2)")
    add_insecure_flag(ap)
    args = ap.parse_args()
    with BenchSecurity(args.insecure) as security:
        return measure_all(args, security)


def measure_all(args: argparse.Namespace, security: BenchSecurity) -> int:
    quiet: dict[tuple[int, int], float] = {}
    for threads in (int(x) for x in args.threads.split(",")):
        with tempfile.TemporaryDirectory() as tmp, serving_node(ROOT, Path(tmp), env(threads), security) as ch:
            stub = pb_grpc.InferenceStub(ch)
            throughput(stub, 1, 8)  # warm-up
            for busy in (int(x) for x in args.busy.split(",")):
                spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(busy)]
                try:
                    for c in (int(x) for x in args.concurrency.split(",")):
                        for n in range(1, args.passes + 1):
                            tps = throughput(stub, c, args.max_tokens)
                            if busy == 0:
                                quiet[(threads, c)] = max(tps, quiet.get((threads, c), 0.0))
                            base = quiet.get((threads, c))
                            ratio = f"  {tps / base:.2f} of quiet" if base and busy else ""
                            line = f"threads {threads}  busy {busy}  concurrency {c}  pass {n}  {tps:6.1f} tokens/s"
                            print(line + ratio, flush=True)
                finally:
                    for s in spinners:
                        s.kill()
                        s.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
