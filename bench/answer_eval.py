"""What a knowledge answer says: does it state the fact, cite a source that holds it, abstain when it should?

Starts a real node (`edgefleet-node serve`) per model, ingests bench/rag_corpus as collection `manual`
and bench/rag_corpus_debian as `debian` through gRPC `Ingest`, and asks each question of
bench/answer_questions.json through `Generate` with the collection (greedy, so a run repeats). Per
model it prints, over the answerable questions:

  own    the model's own words state the fact (before anything the node appends)
  fact   the answer as the client gets it states the fact (with the quoted source the node adds
         when the model's words are not supported by the sources: node/knowledge/grounding.py)
  cited  `fact`, and a cited chunk states it (its heading or text: the chunks come from `Retrieve` with the
         same question and top_k, which the node's retrieval for `Generate` returns the same)
  unsup  the node flagged sentences of the model's answer as not supported by the sources
  false  the answer abstained although the documents answer it

and over the unanswerable ones `abstain`: the answer says the documents do not cover it
(`GenerateChunk.abstained`). Targets (issue 27): the 0.5B model ≥ 0.8 `cited` and ≥ 0.8 `abstain`.

    .venv/bin/python bench/answer_eval.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--max-tokens 96] [--top-k 4] [--json out.json] [--verbose]

A model that is not installed is skipped with a note (the 0.5B model: `scripts/setup` installs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import serving_node  # noqa: E402
from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.node.errors import ModelError  # noqa: E402
from edgefleet.node.model_catalog import resolve_model  # noqa: E402
from edgefleet.proto.v1 import inference_pb2 as pb  # noqa: E402
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

QUESTIONS = ROOT / "bench" / "answer_questions.json"
CORPORA = {"manual": ROOT / "bench" / "rag_corpus", "debian": ROOT / "bench" / "rag_corpus_debian"}
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
APPENDED = re.compile(r"\n\n(?:The sources say: |The documents do not cover this\.)")


@dataclass(frozen=True)
class Question:
    id: str
    collection: str
    question: str
    fact: tuple[str, ...] = ()
    docs: tuple[str, ...] = ()  # the documents that state the fact

    @property
    def answerable(self) -> bool:
        return bool(self.fact)


@dataclass
class Outcome:
    id: str
    answerable: bool
    text: str
    own: bool = False
    fact: bool = False
    cited: bool = False
    unsupported: bool = False
    abstained: bool = False
    citations: list[str] = field(default_factory=list)
    ms: float = 0.0


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    raw = json.loads(path.read_text())["questions"]

    def docs(d: str | list[str] | None) -> tuple[str, ...]:
        return (d,) if isinstance(d, str) else tuple(d or ())

    return [
        Question(q["id"], q["collection"], q["question"], tuple(q.get("fact", ())), docs(q.get("doc"))) for q in raw
    ]


def corpus_documents(folder: Path) -> list[pb.Document]:
    return [
        pb.Document(id=p.stem, text=p.read_text(), metadata={"source": p.name})
        for p in sorted(folder.glob("*.md"))
        if p.stem != "README"
    ]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def states(text: str, facts: tuple[str, ...]) -> bool:
    t = _norm(text)
    return any(_norm(f) in t for f in facts)


def score(q: Question, text: str, final: pb.GenerateChunk, ms: float, chunks: dict[str, str]) -> Outcome:
    """`chunks`: chunk id -> heading and text of the chunks the answer could cite."""
    own_words = APPENDED.split(text, maxsplit=1)[0]
    cited_text = " ".join(chunks.get(c.chunk_id, "") for c in final.citations)
    o = Outcome(
        q.id,
        q.answerable,
        text,
        unsupported=final.unsupported,
        abstained=final.abstained,
        citations=[c.chunk_id for c in final.citations],
        ms=ms,
    )
    if q.answerable:
        o.own = states(own_words, q.fact)
        o.fact = states(text, q.fact)
        o.cited = o.fact and states(cited_text, q.fact)
    return o


def ask(stub: pb_grpc.InferenceStub, q: Question, max_tokens: int, top_k: int) -> Outcome:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=q.question)],
        retrieval=pb.Retrieval(collection=q.collection, top_k=top_k),
        max_tokens=max_tokens,
        temperature=0,
    )
    started = time.monotonic()
    text, final = "", pb.GenerateChunk()
    for c in stub.Generate(req, timeout=300):
        text += c.text
        final = c
    ms = (time.monotonic() - started) * 1000
    found = stub.Retrieve(pb.RetrieveRequest(query=q.question, collection=q.collection, top_k=top_k), timeout=60)
    return score(q, text, final, ms, {c.chunk_id: f"{c.heading}\n{c.text}" for c in found.chunks})


def evaluate(model: str, questions: list[Question], args: argparse.Namespace, security: BenchSecurity) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-answer-eval-") as d:
        env = {"EDGEFLEET_MODEL": model, "EDGEFLEET_RESPONSE_CACHE": "false", "EDGEFLEET_MAX_DOCUMENT_BYTES": "500000"}
        with serving_node(ROOT, Path(d) / "data", env, security) as channel:
            stub = pb_grpc.InferenceStub(channel)
            for name, folder in CORPORA.items():
                stub.Ingest(
                    pb.IngestRequest(collection=name, version="1", documents=corpus_documents(folder)), timeout=600
                )
            out = []
            for q in questions:
                o = ask(stub, q, args.max_tokens, args.top_k)
                if args.verbose:
                    flags = f"fact={o.fact} cited={o.cited} unsup={o.unsupported} abst={o.abstained}"
                    print(f"  {q.id} {flags} {o.citations}\n    {o.text!r}", flush=True)
                out.append(o)
            return out


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    ans = [o for o in outcomes if o.answerable]
    una = [o for o in outcomes if not o.answerable]

    def share(xs: list[Outcome], attr: str) -> float:
        return round(sum(bool(getattr(o, attr)) for o in xs) / len(xs), 3) if xs else 0.0

    return {
        "answerable": len(ans),
        "unanswerable": len(una),
        "own": share(ans, "own"),
        "fact": share(ans, "fact"),
        "cited": share(ans, "cited"),
        "unsupported": share(ans, "unsupported"),
        "false_abstain": share(ans, "abstained"),
        "abstain": share(una, "abstained"),
        "median_ms": sorted(o.ms for o in outcomes)[len(outcomes) // 2] if outcomes else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--json", type=Path, help="write every answer and the figures here")
    ap.add_argument("--verbose", action="store_true", help="print every answer")
    add_insecure_flag(ap)
    args = ap.parse_args()
    questions = load_questions()
    results: dict[str, Any] = {}
    with BenchSecurity(args.insecure) as security:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            try:
                resolve_model(model, Path(tempfile.gettempdir()) / "edgefleet-answer-eval-probe")
            except ModelError as e:
                print(f"{model}: skipped, not installed ({e})")
                continue
            print(f"{model}: {len(questions)} questions", flush=True)
            outcomes = evaluate(model, questions, args, security)
            results[model] = {"summary": summary(outcomes), "answers": [asdict(o) for o in outcomes]}
    print(f"\n{'model':32} {'own':>5} {'fact':>5} {'cited':>5} {'unsup':>5} {'false':>5} {'abstain':>7} {'p50 ms':>7}")
    for model, r in results.items():
        s = r["summary"]
        print(
            f"{model:32} {s['own']:5.2f} {s['fact']:5.2f} {s['cited']:5.2f} {s['unsupported']:5.2f} "
            f"{s['false_abstain']:5.2f} {s['abstain']:7.2f} {s['median_ms']:7.0f}"
        )
    if results:
        s0 = next(iter(results.values()))["summary"]
        print(f"({s0['answerable']} answerable, {s0['unanswerable']} unanswerable questions)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
