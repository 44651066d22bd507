"""How fast a repeated deterministic question comes back from the response cache, over real gRPC.

Starts a node (`edgefleet-node serve --profile x86-dev`, no broker: offline), ingests the project's
corpus (bench/rag_corpus) into a collection, asks each question once with retrieval at
temperature 0 (generated: a miss), then asks each again `--repeats` times (hits), timing every
call on the client from the request to the last chunk. Prints miss and hit latency (median, p99)
and the share of repeats that said `cached`.

    .venv/bin/python bench/response_cache.py [--questions 10] [--repeats 20] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

CORPUS = ROOT / "bench" / "rag_corpus"


def ask(stub: pb_grpc.InferenceStub, question: str, max_tokens: int) -> tuple[float, pb.GenerateChunk]:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=question)],
        retrieval=pb.Retrieval(collection="manual", top_k=3),
        max_tokens=max_tokens,
        temperature=0,
    )
    t0 = time.perf_counter()
    last = None
    for chunk in stub.Generate(req, timeout=120):
        last = chunk
    assert last is not None
    return (time.perf_counter() - t0) * 1000, last


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=32)
    add_insecure_flag(p)
    args = p.parse_args(argv)
    questions = [q["question"] for q in json.loads((CORPUS / "questions.json").read_text())["questions"]]
    questions = questions[: args.questions]
    with BenchSecurity(args.insecure) as security, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with serving_node(ROOT, tmp / "data", {"EDGEFLEET_RESPONSE_CACHE": "true"}, security) as channel:
            stub = pb_grpc.InferenceStub(channel)
            docs = [
                pb.Document(id=f.stem, text=f.read_text()) for f in sorted(CORPUS.glob("*.md")) if f.stem != "README"
            ]
            t0 = time.perf_counter()
            r = stub.Ingest(pb.IngestRequest(collection="manual", version="1", documents=docs), timeout=120)
            print(f"ingest: {r.documents} documents, {r.chunks} chunks in {(time.perf_counter() - t0) * 1000:.0f} ms")
            misses = [ask(stub, q, args.max_tokens) for q in questions]
            hits = [ask(stub, q, args.max_tokens) for _ in range(args.repeats) for q in questions]
            miss_ms = [ms for ms, c in misses if not c.cached]
            hit_ms = [ms for ms, c in hits if c.cached]
            print(
                f"miss (generated)  n={len(miss_ms):<4} median {statistics.median(miss_ms):7.1f} ms  "
                f"p99 {pct(miss_ms, 0.99):7.1f} ms"
            )
            print(
                f"hit  (cached)     n={len(hit_ms):<4} median {statistics.median(hit_ms):7.2f} ms  "
                f"p99 {pct(hit_ms, 0.99):7.2f} ms  ({len(hit_ms)}/{len(hits)} repeats said cached)"
            )
            verdict = "PASS" if statistics.median(hit_ms) < 5 else "FAIL"
            print(f"cached answer median {statistics.median(hit_ms):.2f} ms (target < 5 ms): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
