#!/usr/bin/env python3
"""Retrieval quality and speed of the node's knowledge store on the committed corpus.

    .venv/bin/python bench/rag_eval.py                          # all embedders (~1-2 min on 2 cores)
    .venv/bin/python bench/rag_eval.py --embedders wordllama    # seconds

Loads `bench/rag_corpus/*.md` (a fictional chiller manual, maintenance procedures, incident
notes) into a fresh store in a temporary directory, once per embedder, and asks the questions of
`bench/rag_corpus/questions.json` in each mode:

  keyword              FTS5 / BM25 only (the same for every embedder, measured once)
  vector[<embedder>]   nearest neighbours of the query embedding
  hybrid[<embedder>]   reciprocal rank fusion (k=60) of the two

Embedders: `wordllama` (static embeddings from the wordllama wheel), `node` (the node's model,
SmolLM2-135M-Instruct, mean-pooled through an `embed_fn` callable as the engine provides it)
and `gguf` (the same GGUF file loaded by `LlamaEmbedder.from_gguf`; it should score as `node`).

Relevance: each question lists answers as (document id, section heading). A retrieved chunk is
relevant to an answer when it comes from that document and the heading is on its heading path
(any chunk of the document when no section is given), so labels survive changes of chunk size.
  recall@5  mean over questions of (answers found among the top 5 chunks / answers listed)
  MRR       mean over questions of 1 / rank of the first relevant chunk within the top 5 (0 if none)
Also printed: ingest throughput (chunks/s, chunking + embedding + writing, synchronous=FULL)
and the median latency of one retrieve() call per mode (query embedding included).

The default embedder is the one with the best hybrid recall@5 (then MRR, then latency); the
script compares that with `edgefleet.node.knowledge.embedders.DEFAULT_EMBEDDER_KIND`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.knowledge import Document, Hit, KnowledgeStore, LlamaEmbedder, WordLlamaEmbedder
from edgefleet.node.knowledge.embedders import DEFAULT_EMBEDDER_KIND, Embedder
from edgefleet.node.knowledge.search import Mode

CORPUS = Path(__file__).resolve().parent / "rag_corpus"
COLLECTION = "kr9"
TOP_K = 5


@dataclass(frozen=True)
class Answer:
    doc: str
    section: str | None


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: list[Answer]


@dataclass
class Score:
    label: str
    recall: float
    mrr: float
    median_ms: float


def load_corpus(corpus: Path) -> tuple[list[Document], list[Question]]:
    docs = []
    for path in sorted(corpus.glob("*.md")):
        if path.name == "README.md":
            continue
        text = path.read_text(encoding="utf-8")
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
        docs.append(Document(path.stem, text, {"title": title, "source": path.name}, "markdown"))
    raw = json.loads((corpus / "questions.json").read_text(encoding="utf-8"))
    questions = [
        Question(q["id"], q["question"], [Answer(a["doc"], a.get("section")) for a in q["answers"]])
        for q in raw["questions"]
    ]
    return docs, questions


def relevant(hit: Hit, answer: Answer) -> bool:
    if hit.doc_id != answer.doc:
        return False
    return answer.section is None or answer.section in hit.heading.split(" > ")


def evaluate(store: KnowledgeStore, questions: list[Question], mode: Mode, label: str) -> Score:
    recalls, rrs, times = [], [], []
    for q in questions:
        t0 = time.perf_counter()
        hits = store.retrieve(q.text, COLLECTION, TOP_K, mode)
        times.append((time.perf_counter() - t0) * 1000)
        found = sum(any(relevant(h, a) for h in hits) for a in q.answers)
        recalls.append(found / len(q.answers))
        rank = next((i for i, h in enumerate(hits, 1) if any(relevant(h, a) for a in q.answers)), None)
        rrs.append(1.0 / rank if rank else 0.0)
    return Score(label, statistics.fmean(recalls), statistics.fmean(rrs), statistics.median(times))


def node_model_embedder(n_threads: int) -> tuple[LlamaEmbedder, Path]:
    """The node's embedder as the engine would provide it: an embed_fn over a llama.cpp model."""
    import llama_cpp

    from edgefleet.node.model_catalog import resolve_model

    with tempfile.TemporaryDirectory() as data_dir:
        model = resolve_model(None, Path(data_dir))
    llm = llama_cpp.Llama(
        model_path=str(model.path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_threads=n_threads,
        n_ctx=1024,
        n_batch=1024,
        n_ubatch=1024,
        verbose=False,
    )

    def embed_fn(texts: list[str]) -> list[list[float]]:
        return llm.embed(texts, normalize=False, truncate=True)  # type: ignore[return-value,unused-ignore]

    embedder = LlamaEmbedder(embed_fn, LlamaEmbedder.identity_for(model.sha256), int(llm.n_embd()))
    embedder._llm = llm
    return embedder, model.path


def make(name: str, n_threads: int) -> Callable[[], Embedder]:
    if name == "wordllama":
        return WordLlamaEmbedder
    if name == "node":
        return lambda: node_model_embedder(n_threads)[0]
    if name == "gguf":

        def gguf() -> Embedder:
            from edgefleet.node.model_catalog import resolve_model

            with tempfile.TemporaryDirectory() as data_dir:
                model = resolve_model(None, Path(data_dir))
            return LlamaEmbedder.from_gguf(model.path, n_threads=n_threads, sha256=model.sha256)

        return gguf
    raise SystemExit(f"unknown embedder {name!r}: use wordllama, node, gguf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--embedders", default="wordllama,node,gguf", help="comma-separated: wordllama,node,gguf")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the node/gguf embedders")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--backend", default="auto", choices=["auto", "sqlite-vec", "numpy"])
    args = ap.parse_args()

    docs, questions = load_corpus(args.corpus)
    print(f"corpus: {len(docs)} documents, {len(questions)} questions, top_k={TOP_K}")
    scores: dict[str, list[Score]] = {}
    keyword: Score | None = None
    for name in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        t0 = time.perf_counter()
        embedder = make(name, args.threads)()
        load_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            store = KnowledgeStore(Path(tmp) / "knowledge.sqlite", embedder, vector_backend=args.backend)
            t0 = time.perf_counter()
            result = store.install_collection(COLLECTION, "eval", docs)
            ingest_s = time.perf_counter() - t0
            print(
                f"ingest[{name}] {result.chunks} chunks in {ingest_s:.2f} s: {result.chunks / ingest_s:.0f} chunks/s "
                f"({embedder.identity}, {embedder.dimensions} dims, loaded in {load_s:.2f} s, "
                f"backend {store.search_backend})"
            )
            if keyword is None:
                keyword = evaluate(store, questions, "keyword", "keyword")
                print(
                    f"keyword recall@5 {keyword.recall:.3f}  MRR {keyword.mrr:.3f}  median {keyword.median_ms:.2f} ms"
                )
            for mode in ("vector", "hybrid"):
                s = evaluate(store, questions, mode, f"{mode}[{name}]")
                scores.setdefault(name, []).append(s)
                print(f"{s.label} recall@5 {s.recall:.3f}  MRR {s.mrr:.3f}  median {s.median_ms:.2f} ms")
            store.close()
    if not scores:
        return 1
    best = max(scores, key=lambda n: (scores[n][1].recall, scores[n][1].mrr, -scores[n][1].median_ms))
    hybrid = scores[best][1]
    print(
        f"default embedder by measurement: {best} (hybrid recall@5 {hybrid.recall:.3f}, MRR {hybrid.mrr:.3f}, "
        f"median {hybrid.median_ms:.2f} ms); library default DEFAULT_EMBEDDER_KIND = {DEFAULT_EMBEDDER_KIND!r}"
        + ("" if best == DEFAULT_EMBEDDER_KIND else "  <-- differs")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
