#!/usr/bin/env python3
"""Reranking the fused candidates with the local model (query likelihood): quality and cost, measured.

    .venv/bin/python bench/lm_rerank.py                                  # rag_corpus_debian, top 10, SmolLM2-135M
    .venv/bin/python bench/lm_rerank.py --corpus bench/rag_corpus --depth 20 --model qwen2.5-coder-0.5b-instruct

Issue 27 lists "reranking the fused top 20 with the local model" among the candidates for retrieval that
holds on unseen manuals. This measures the cheapest form of it that needs no trained reranker: each of the
hybrid ranking's top `--depth` chunks (the node's own store, wordllama, as `bench/rag_eval.py` builds it) is
scored by the model's log-likelihood of the question given the chunk (Sachan et al., "Improving Passage
Retrieval with Zero-Shot Question Generation", 2022: UPR), `Passage: <heading path + text>` then
`Question: <question>`, the passage cut to `--passage-tokens` tokens, one llama.cpp evaluation per candidate
with the logits of every position. Two orders are scored against the same labels as rag_eval's:
`lm`: by that likelihood alone; `fused`: reciprocal rank fusion (k = 10, equal weights, not tuned) of the
hybrid rank and the likelihood rank. Candidates below `--depth` keep their hybrid order after them.

Prints recall@5 / MRR@10 before and after, and the cost: model seconds per candidate and per query, prompt
tokens per second, with the load average. Never run on a held-out corpus (refused): it is a measurement
for tuning, not the report of the held-out sets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rag_eval import COLLECTION, HELDOUT, MRR_DEPTH, load_corpus, score_hits  # noqa: E402
from edgefleet.node.knowledge import Hit, KnowledgeStore, WordLlamaEmbedder  # noqa: E402

FUSION_K = 10


class QueryLikelihood:
    """log P(question | passage) under a llama.cpp model, one evaluation per passage."""

    def __init__(self, model_path: Path, threads: int, passage_tokens: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=passage_tokens + 128,
            n_batch=passage_tokens + 128,
            n_ubatch=passage_tokens + 128,
            logits_all=True,
            n_threads=threads,
            verbose=False,
        )
        self.passage_tokens = passage_tokens
        self.head = self.llm.tokenize(b"\nQuestion:", add_bos=False, special=False)
        self.tokens = 0

    def score(self, passage: str, question: str) -> float:
        p = self.llm.tokenize(("Passage: " + passage).encode(), add_bos=True, special=False)[: self.passage_tokens]
        q = self.llm.tokenize(("\nQuestion: " + question).encode(), add_bos=False, special=False)[:100]
        tokens = p + q
        self.llm.reset()
        self.llm.eval(tokens)
        self.tokens += len(tokens)
        start = len(p) + len(self.head)  # the question's own words, after "Question:"
        logits = np.asarray(self.llm.scores[start - 1 : len(tokens) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        targets = np.asarray(tokens[start:])
        return float((logits[np.arange(len(targets)), targets] - log_norm).sum())


def rerank(hits: list[Hit], scores: list[float]) -> tuple[list[Hit], list[Hit]]:
    """(by likelihood alone, fused with the hybrid rank) over the scored head; the rest keeps its order."""
    head, tail = hits[: len(scores)], hits[len(scores) :]
    by_lm = sorted(range(len(head)), key=lambda i: -scores[i])
    lm_rank = {i: r for r, i in enumerate(by_lm, 1)}
    fused = sorted(range(len(head)), key=lambda i: -(1 / (FUSION_K + i + 1) + 1 / (FUSION_K + lm_rank[i])))
    return [head[i] for i in by_lm] + tail, [head[i] for i in fused] + tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--corpus", type=Path, action="append", help="a corpus folder (repeatable; default the Debian set)")
    ap.add_argument("--model", default=None, help="a catalog name or a GGUF path (default: the node's default model)")
    ap.add_argument("--depth", type=int, default=10, help="candidates scored per question (the hybrid top N)")
    ap.add_argument("--passage-tokens", type=int, default=128, help="each passage cut to this many tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions of each corpus (a cost check)")
    args = ap.parse_args()
    corpora = args.corpus or [ROOT / "bench" / "rag_corpus_debian"]
    for path in corpora:
        if path.name in HELDOUT:
            raise SystemExit(f"{path.name} is held out: it reports retrieval once, it does not tune it")

    from edgefleet.node.model_catalog import resolve_model

    with tempfile.TemporaryDirectory() as data_dir:
        model = resolve_model(args.model, Path(data_dir))
        ql = QueryLikelihood(model.path, args.threads, args.passage_tokens)
    embedder = WordLlamaEmbedder()
    for path in corpora:
        docs, questions = load_corpus(path)
        questions = questions[: args.limit] if args.limit else questions
        before, lm_only, fused, seconds = [], [], [], []
        ql.tokens = 0
        with tempfile.TemporaryDirectory() as tmp:
            store = KnowledgeStore(Path(tmp) / "knowledge.sqlite", embedder)
            store.install_collection(COLLECTION, "eval", docs)
            for question in questions:
                hits = store.retrieve(question.text, COLLECTION, max(args.depth, MRR_DEPTH), "hybrid")
                t0 = time.perf_counter()
                scores = [ql.score(f"{h.heading}\n{h.text}", question.text) for h in hits[: args.depth]]
                seconds.append(time.perf_counter() - t0)
                by_lm, by_fusion = rerank(hits, scores)
                before.append(score_hits(hits, question.answers))
                lm_only.append(score_hits(by_lm, question.answers))
                fused.append(score_hits(by_fusion, question.answers))
            store.close()
        print(
            f"{path.name}: {len(questions)} questions, {model.name}, top {args.depth}, "
            f"{args.passage_tokens}-token passages"
        )
        for label, rows in (("hybrid", before), ("lm", lm_only), ("fused", fused)):
            recall = statistics.fmean(r for r, _ in rows)
            mrr = statistics.fmean(m for _, m in rows)
            print(f"  {label:<7} recall@5 {recall:.3f}  MRR@10 {mrr:.3f}")
        total = sum(seconds)
        print(
            f"  cost: {statistics.median(seconds):.2f} s per query (median), "
            f"{total / (len(questions) * args.depth):.3f} s "
            f"per candidate, {ql.tokens / total:.0f} prompt tokens/s on {args.threads} threads, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
