"""A fixed prompt prefix after a node restart: is the first answer as fast as a warm one?

A sensor rule or template renders a long fixed system prompt and a short changing part. The node
keeps the fixed prefix's KV cells in slots (in memory) and in the prefix store (on disk,
EDGEFLEET_PREFIX_STORE_MB). This starts a node (`edgefleet-node serve --profile x86-dev`, offline,
response cache off) `--restarts` times on one data directory, each time asking the same system
prompt (300+ tokens) with a new question: once right after the start (the first answer after a
restart), then `--warm` more (warm). Run once with the store off (cold without store) and once with
it on. Prints the median time to first token (client side, request to first text chunk; and the
node's own figure) of each, and the ratios.

    .venv/bin/python bench/prefix_restart.py [--restarts 3] [--warm 3] [--max-tokens 8] [--insecure]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

SYSTEM = (
    "You watch the pumps of a water treatment plant and answer the operators. Pumps P1 to P4 feed the "
    "sand filters; P5 and P6 lift treated water to the tower. A vibration above 7.1 mm/s RMS, a bearing "
    "temperature above 80 C, a suction pressure below 0.4 bar or a motor current 15 % above its nameplate "
    "is a fault. For each fault name the pump, the reading and the limit, then the first thing to check: "
    "bearings and lubrication for vibration and heat, the strainer and the inlet valve for low suction, "
    "the impeller and the coupling alignment for high current. Readings inside the limits need no action. "
    "Never invent readings; if a value is missing say so. Keep every answer to one or two sentences. "
) * 2
PUMPS = ["P1", "P2", "P3", "P4", "P5", "P6"]


def question(i: int) -> str:
    return f"{PUMPS[i % 6]} reports vibration {5.0 + 0.37 * i:.2f} mm/s RMS and bearing temperature {60 + i} C."


def ask(stub: pb_grpc.InferenceStub, i: int, max_tokens: int) -> tuple[float, float, int, int]:
    """(client TTFT ms, node TTFT ms, prompt tokens, cached prompt tokens) of one request."""
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="system", content=SYSTEM), pb.ChatMessage(role="user", content=question(i))],
        max_tokens=max_tokens,
        temperature=0,
    )
    t0 = time.perf_counter()
    first = 0.0
    last = None
    for chunk in stub.Generate(req, timeout=300):
        if not first and chunk.text:
            first = time.perf_counter()
        if chunk.finish_reason:
            last = chunk
    assert last is not None, "no final chunk"
    first = first or time.perf_counter()
    u = last.usage
    return (first - t0) * 1000, u.time_to_first_token_ms, u.prompt_tokens, u.cached_prompt_tokens


def run(store_mb: int, args: argparse.Namespace, security: BenchSecurity, tmp: Path) -> dict[str, list[float]]:
    env = {"EDGEFLEET_RESPONSE_CACHE": "false", "EDGEFLEET_PREFIX_STORE_MB": str(store_mb)}
    if args.threads:
        env["EDGEFLEET_THREADS"] = str(args.threads)
    data = tmp / f"data-store{store_mb}"
    out: dict[str, list[float]] = {"first": [], "first_node": [], "warm": [], "warm_node": [], "first_cached": []}
    n = 0
    for r in range(args.restarts + 1):
        with serving_node(ROOT, data, env, security) as channel:
            stub = pb_grpc.InferenceStub(channel)
            c, s, prompt, cached = ask(stub, n, args.max_tokens)
            n += 1
            if r == 0:  # the very first start: nothing saved yet, the prefix is read and (store on) saved
                print(f"  store {store_mb} MB, first start: TTFT {c:.0f} ms, {prompt} prompt tokens, {cached} cached")
            else:
                out["first"].append(c)
                out["first_node"].append(s)
                out["first_cached"].append(cached)
                print(f"  store {store_mb} MB, restart {r}: first TTFT {c:.0f} ms ({cached}/{prompt} cached)")
            for _ in range(args.warm):
                c, s, prompt, cached = ask(stub, n, args.max_tokens)
                n += 1
                out["warm"].append(c)
                out["warm_node"].append(s)
    return out


def measure(args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    """Median TTFTs (client and node) of the first answers after restarts, with and without the
    prefix store, and of warm answers; `args` as this script's options (restarts, warm,
    max_tokens, threads, store_mb)."""
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        without = run(0, args, security, tmp)
        with_store = run(args.store_mb, args, security, tmp)
    cold, restored = med(without["first"]), med(with_store["first"])
    warm = med(without["warm"] + with_store["warm"])
    return {
        "cold_ms": cold,
        "restored_ms": restored,
        "warm_ms": warm,
        "cold_node_ms": med(without["first_node"]),
        "restored_node_ms": med(with_store["first_node"]),
        "warm_node_ms": med(without["warm_node"] + with_store["warm_node"]),
        "restored_over_warm": restored / warm,
        "cold_over_warm": cold / warm,
        "first_cached_tokens": with_store["first_cached"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--warm", type=int, default=3, help="warm requests after each start's first")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="EDGEFLEET_THREADS for the node; 0: the profile's")
    p.add_argument("--store-mb", type=int, default=256, help="EDGEFLEET_PREFIX_STORE_MB of the run with the store")
    add_insecure_flag(p)
    args = p.parse_args(argv)
    with BenchSecurity(args.insecure) as security:
        m = measure(args, security)
    cold, restored, warm = m["cold_ms"], m["restored_ms"], m["warm_ms"]
    print()
    print("command: .venv/bin/python bench/prefix_restart.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print(f"median TTFT over {args.restarts} restarts, {args.max_tokens} tokens, system prompt as in the script")
    print("| first token after a restart | client ms | node ms | / warm (client) |")
    print("|---|---|---|---|")
    print(f"| cold, no prefix store | {cold:.0f} | {m['cold_node_ms']:.0f} | {cold / warm:.2f} |")
    print(f"| prefix store restored | {restored:.0f} | {m['restored_node_ms']:.0f} | {restored / warm:.2f} |")
    print(f"| warm (prefix in a slot) | {warm:.0f} | {m['warm_node_ms']:.0f} | 1.00 |")
    print(f"restored / warm = {restored / warm:.2f} (goal <= 1.10); cold / restored = {cold / restored:.1f}x")
    print(f"cached prompt tokens of the first answers with the store: {m['first_cached_tokens']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
