"""Does CPU work for new requests stall the tokens of running streams? (the node's gRPC event loop)

Starts a node (`edgefleet-node serve --profile x86-dev`, offline, one compute thread), keeps four
streams generating (all four slots busy) and times the gap between consecutive chunks on the
client. Then does the same while `--disruptors` other clients keep sending requests that cost the
node CPU before they can even queue: a long chat prompt (rendered and tokenized) and a large JSON
schema (compiled to a grammar), with a short deadline, so they never take a slot and only the
node's request handling, not the decode loop, is what the streams can feel. Prints the gap
median, p90, p99 and max, quiet and loaded, and how many disruptor requests the node handled.

    .venv/bin/python bench/loop_stall.py [--seconds 20] [--disruptors 3] [--schemas 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

STREAM_PROMPT = "Write a long story about a lighthouse keeper and the storms of one winter."
LONG_TEXT = " ".join(
    f"Sensor {i} on line {i % 7} reported vibration {i * 0.37:.2f} mm/s and temperature {20 + i % 15} C."
    for i in range(70)
)


def big_schema(variant: int, n_fields: int = 40) -> str:
    """A schema of the size a maintenance report would use: nested objects, enums, bounds."""
    props: dict[str, object] = {}
    for i in range(n_fields):
        props[f"field_{variant}_{i}"] = {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "warn", "fail", f"v{variant}"]},
                "value": {"type": "number", "minimum": 0, "maximum": 1000},
                "note": {"type": "string", "maxLength": 40},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            },
            "required": ["status", "value"],
        }
    return json.dumps({"type": "object", "properties": props, "required": list(props)[:10]})


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def stream_gaps(stub: pb_grpc.InferenceStub, stop: threading.Event, gaps: list[float]) -> None:
    """Generate again and again until told to stop; record the gaps between chunks (ms)."""
    while not stop.is_set():
        req = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="user", content=STREAM_PROMPT)], max_tokens=400, temperature=0.7, seed=1
        )
        last = None
        for _ in stub.Generate(req, timeout=300):
            now = time.perf_counter()
            if last is not None and not stop.is_set():
                gaps.append((now - last) * 1000)
            last = now


def disrupt(stub: pb_grpc.InferenceStub, stop: threading.Event, schemas: list[str], counts: dict[str, int]) -> None:
    i = 0
    while not stop.is_set():
        req = pb.GenerateRequest(
            messages=[
                pb.ChatMessage(role="system", content="You file maintenance reports as JSON."),
                pb.ChatMessage(role="user", content=f"{i} {LONG_TEXT}"),
            ],
            max_tokens=8,
            json_schema=schemas[i % len(schemas)],
        )
        i += 1
        try:
            for _ in stub.Generate(req, timeout=0.3):
                pass
        except grpc.RpcError as e:
            counts[e.code().name] = counts.get(e.code().name, 0) + 1
            continue
        counts["OK"] = counts.get("OK", 0) + 1


def measure(stub: pb_grpc.InferenceStub, seconds: float, disruptors: int, schemas: list[str]) -> dict[str, object]:
    stop = threading.Event()
    gaps: list[list[float]] = [[] for _ in range(4)]
    counts: dict[str, int] = {}
    threads = [threading.Thread(target=stream_gaps, args=(stub, stop, g)) for g in gaps]
    for t in threads:
        t.start()
    time.sleep(2.0)  # the four streams are running
    for g in gaps:
        g.clear()
    others = [threading.Thread(target=disrupt, args=(stub, stop, schemas, counts)) for _ in range(disruptors)]
    for t in others:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads + others:
        t.join(300)
    flat = [x for g in gaps for x in g]
    return {
        "gaps": len(flat),
        "median_ms": statistics.median(flat),
        "p90_ms": pct(flat, 0.90),
        "p99_ms": pct(flat, 0.99),
        "max_ms": max(flat),
        "disruptor_replies": counts,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--disruptors", type=int, default=3)
    p.add_argument("--schemas", type=int, default=8, help="distinct schemas the disruptors rotate through")
    add_insecure_flag(p)
    args = p.parse_args(argv)
    schemas = [big_schema(v) for v in range(args.schemas)]
    print(f"schema size {len(schemas[0])} bytes, long prompt {len(LONG_TEXT)} chars")
    env = {"EDGEFLEET_THREADS": "1"}
    with (
        BenchSecurity(args.insecure) as security,
        tempfile.TemporaryDirectory() as tmp,
        serving_node(ROOT, Path(tmp), env, security) as channel,
    ):
        stub = pb_grpc.InferenceStub(channel)
        quiet = measure(stub, args.seconds, 0, schemas)
        loaded = measure(stub, args.seconds, args.disruptors, schemas)
    for name, r in (("quiet", quiet), (f"{args.disruptors} disruptors", loaded)):
        print(
            f"{name:>14}: {r['gaps']} gaps, median {r['median_ms']:.1f} ms, p90 {r['p90_ms']:.1f}, "
            f"p99 {r['p99_ms']:.1f}, max {r['max_ms']:.1f}; disruptor replies {r['disruptor_replies']}"
        )
    print(f"p99 loaded / quiet: {float(loaded['p99_ms']) / float(quiet['p99_ms']):.2f}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
