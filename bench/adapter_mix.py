"""What mixing adapters costs: total tokens/s at concurrency 4, base vs one adapter vs two adapters.

llama.cpp applies LoRA adapters per context, so requests with different adapters cannot share a
decode step: the scheduler alternates steps between adapter groups. This starts a real node
(`edgefleet-node serve`) with two synthetic rank-16 LoRAs and runs four concurrent gRPC streams:
  base   4 requests, no adapter
  one    4 requests, adapter A
  two    2 requests with adapter A, 2 with adapter B
and prints total completion tokens/s per mix and the ratio two/one, both per wall second and per
second of the node process's CPU time (user + system, all its threads): on a host other processes
load, the CPU figure moves less (run with EDGEFLEET_THREADS=1 then, so no compute thread spins
waiting for one the host has parked).

    .venv/bin/python bench/adapter_mix.py [--rounds 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.node.model_catalog import resolve_model  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402
from tools.make_lora import write_lora  # noqa: E402

PROMPTS = [
    "Describe how a centrifugal pump works, step by step.",
    "Explain what bearing wear sounds like and why.",
    "List the checks for a motor that overheats.",
    "Write a short maintenance log entry for a conveyor belt.",
]
MIXES = {"base": ["", "", "", ""], "one": ["a", "a", "a", "a"], "two": ["a", "b", "a", "b"]}


def node_pid(data_dir: Path) -> int | None:
    """The pid of the node serving `data_dir` (its command line names it), or None."""
    want = f"--data-dir\0{data_dir}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if want in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far; 0 where unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mix(
    stub: pb_grpc.InferenceStub, adapters: list[str], max_tokens: int, rounds: int, pid: int | None = None
) -> tuple[float, float]:
    """Total completion tokens/s of len(adapters) closed-loop clients, `rounds` requests each: per wall
    second, and per CPU second of process `pid` (0 without one)."""
    tokens = [0] * len(adapters)

    def client(i: int) -> None:
        for r in range(rounds):
            req = pb.GenerateRequest(
                messages=[pb.ChatMessage(role="user", content=PROMPTS[(i + r) % len(PROMPTS)])],
                max_tokens=max_tokens,
                temperature=0.8,
                seed=1000 + i * 10 + r,
                adapter=adapters[i],
            )
            for chunk in stub.Generate(req, timeout=300):
                if chunk.HasField("usage"):
                    tokens[i] += chunk.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(adapters))]
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return sum(tokens) / wall, sum(tokens) / cpu if cpu > 0 else 0.0


def measure(rounds: int, max_tokens: int, repeats: int, security: BenchSecurity) -> dict[str, float]:
    """tokens/s of each mix (the best of `repeats`) and the ratios one/base and two/one; the same per CPU
    second of the node under `<mix>_cpu`, `one_over_base_cpu`, `two_over_one_cpu` (0 where not known)."""
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        base = resolve_model(None, tmp / "data").path
        a = write_lora(base, tmp / "a.gguf", rank=16, seed=1)
        b = write_lora(base, tmp / "b.gguf", rank=16, seed=2)
        with serving_node(ROOT, tmp / "data", {"EDGEFLEET_ADAPTERS": f"a={a},b={b}"}, security) as channel:
            stub = pb_grpc.InferenceStub(channel)
            pid = node_pid(tmp / "data")
            run_mix(stub, MIXES["two"], 8, 1)  # warm up both adapters
            results: dict[str, float] = {}
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in MIXES}
            for _ in range(repeats):  # the mixes take turns, so a busy spell of the host hits them alike
                for name, mix in MIXES.items():
                    runs[name].append(run_mix(stub, mix, max_tokens, rounds, pid))
            for name, mix in MIXES.items():
                results[name] = max(wall for wall, _ in runs[name])
                results[f"{name}_cpu"] = max(cpu for _, cpu in runs[name])
                print(
                    f"{name:<5} c=4  {results[name]:6.1f} tokens/s  {results[f'{name}_cpu']:6.1f} tokens/CPU-s  "
                    f"({' '.join(x or '-' for x in mix)})",
                    flush=True,
                )
    results["one_over_base"] = results["one"] / results["base"]
    results["two_over_one"] = results["two"] / results["one"]
    cpu_known = results["base_cpu"] > 0 and results["one_cpu"] > 0
    results["one_over_base_cpu"] = results["one_cpu"] / results["base_cpu"] if cpu_known else 0.0
    results["two_over_one_cpu"] = results["two_cpu"] / results["one_cpu"] if cpu_known else 0.0
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="requests per client (default 3)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mix; the best is kept (default 2)")
    add_insecure_flag(p)
    args = p.parse_args(argv)
    with BenchSecurity(args.insecure) as security:
        results = measure(args.rounds, args.max_tokens, args.repeats, security)
    print(f"one adapter / base        {results['one_over_base']:.2f}  (per CPU-s {results['one_over_base_cpu']:.2f})")
    print(f"two adapters / one adapter {results['two_over_one']:.2f}  (per CPU-s {results['two_over_one_cpu']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
