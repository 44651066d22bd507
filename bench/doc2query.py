#!/usr/bin/env python3
"""doc2query expansions for the retrieval corpora: questions a local model writes for each chunk, offline.

    .venv/bin/python bench/doc2query.py --corpus bench/rag_corpus_manuals --model qwen2.5-coder-0.5b-instruct
    .venv/bin/python bench/doc2query.py --corpus bench/rag_corpus --limit 8      # a speed check only

Each document of a corpus is chunked exactly as the knowledge store chunks it (`prepare_documents` with the
default `ChunkingConfig`, the documents loaded as `bench/rag_eval.py` loads them). For every chunk the model
(a catalog name, see `edgefleet.node.model_catalog`; llama.cpp in process, temperature 0) is asked for a few
short questions a technician would ask that the chunk answers. The questions are cached in
`<corpus>/expansions.<model>.json`, keyed by the sha256 of the chunk's `search_text` (heading path + text,
what the store indexes), so reruns only generate what is missing and a changed chunk gets new questions.
`bench/rag_eval.py --expansions <model>` indexes them into the keyword side of the store.

Never run on the held-out corpus (refused): its questions must not shape anything tuned.
Prints chunks/s, prompt tokens/s and generated tokens/s, and the load average.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rag_eval import CORPORA, load_corpus  # noqa: E402
from edgefleet.node.knowledge.documents import prepare_documents  # noqa: E402

HELDOUT_PREFIX = "rag_corpus_heldout"
PROMPT_VERSION = 1
N_QUESTIONS = 4
MAX_TOKENS = 60
MAX_QUESTION_WORDS = 25
"""A longer line is the model rambling, not a question: dropped."""
SYSTEM = "You write the search questions that a technician types to find a passage of a manual."
USER = (
    "Passage from {title}, section {heading}:\n\n{text}\n\n"
    "Write {n} short questions that a technician would ask and that this passage answers. "
    "One question per line, no numbering, nothing else."
)
_NUMBERING_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|Q\d*[:.])\s*")


def chunk_key(search_text: str) -> str:
    return hashlib.sha256(search_text.encode("utf-8")).hexdigest()


def expansions_path(corpus: Path, model: str) -> Path:
    return corpus / f"expansions.{model}.json"


def load_expansions(corpus: Path, model: str) -> dict[str, list[str]]:
    """chunk key → questions, from the corpus's cache file ({} when there is none)."""
    path = expansions_path(corpus, model)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: list(v["questions"]) for k, v in data["chunks"].items()}


def corpus_chunks(corpus: Path) -> list[tuple[str, str, str, str]]:
    """(doc id, document title, heading path, text) of every chunk, as the store chunks the corpus."""
    docs, _ = load_corpus(corpus)
    titles = {d.id: d.metadata.get("title", d.id) for d in docs}
    return [(p.id, titles[p.id], c.heading, c.text) for p in prepare_documents(docs) for c in p.chunks]


def parse_questions(raw: str, n: int) -> list[str]:
    """The model's lines as questions: numbering stripped, short, long or repeated lines dropped, at most n."""
    out: list[str] = []
    for line in raw.splitlines():
        q = _NUMBERING_RE.sub("", line).strip().strip('"')
        if 3 <= len(q.split()) <= MAX_QUESTION_WORDS and q not in out:
            out.append(q)
    return out[:n]


def save(path: Path, model: str, entries: dict[str, dict[str, Any]]) -> None:
    """Merge `entries` into the cache file (under a lock, so several shards can write one corpus's file)."""
    with (Path(tempfile.gettempdir()) / f"{path.parent.name}.{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = json.loads(path.read_text(encoding="utf-8"))["chunks"] if path.is_file() else {}
        merged.update(entries)
        data = {"model": model, "prompt_version": PROMPT_VERSION, "max_tokens": MAX_TOKENS, "chunks": merged}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--corpus", type=Path, action="append", help="a corpus folder (repeatable; default the tuning sets)"
    )
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a catalog name (model_catalog.CATALOG)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--limit", type=int, default=0, help="generate for at most this many missing chunks (0: all)")
    ap.add_argument("--no-save", action="store_true", help="measure only: write no cache file")
    ap.add_argument(
        "--shard",
        type=lambda v: tuple(int(x) for x in v.split("/")),
        default=(0, 1),
        help="I/N: only chunks whose index mod N is I (run N processes on one corpus; they merge into one file)",
    )
    ap.add_argument("--show", action="store_true", help="print each chunk's heading and questions")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EDGEFLEET_BENCH_DATA", "/tmp/edgefleet-bench-data")),
        help="where chunked catalog models are assembled once",
    )
    args = ap.parse_args()
    corpora = args.corpus or [c for c in CORPORA if not c.name.startswith(HELDOUT_PREFIX)]
    if any(c.resolve().name.startswith(HELDOUT_PREFIX) for c in corpora):
        raise SystemExit(f"{HELDOUT_PREFIX}*: held out of all tuning; doc2query is not run on it here")

    import llama_cpp

    from edgefleet.node.model_catalog import resolve_model

    args.data_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model, args.data_dir)
    llm = llama_cpp.Llama(
        model_path=str(model.path), n_ctx=1024, n_batch=512, n_threads=args.threads, verbose=False, seed=0
    )
    for corpus in corpora:
        path = expansions_path(corpus, args.model)
        entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            entries = json.loads(path.read_text(encoding="utf-8"))["chunks"]
        chunks = corpus_chunks(corpus)[args.shard[0] :: args.shard[1]]
        todo = [c for c in chunks if chunk_key(f"{c[2]}\n\n{c[3]}" if c[2] else c[3]) not in entries]
        cached = len(chunks) - len(todo)
        if args.limit:
            todo = todo[: args.limit]
        print(f"{corpus.name}: {len(chunks)} chunks, {cached} cached, generating {len(todo)}")
        t0, prompt_tokens, gen_tokens, done = time.perf_counter(), 0, 0, 0
        for doc_id, title, heading, text in todo:
            search_text = f"{heading}\n\n{text}" if heading else text
            messages = [
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": USER.format(title=title, heading=heading or title, text=text, n=N_QUESTIONS),
                },
            ]
            out: Any = llm.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=MAX_TOKENS, repeat_penalty=1.1, seed=0
            )
            raw = out["choices"][0]["message"]["content"] or ""
            prompt_tokens += out["usage"]["prompt_tokens"]
            gen_tokens += out["usage"]["completion_tokens"]
            entries[chunk_key(search_text)] = {
                "doc": doc_id,
                "heading": heading,
                "questions": parse_questions(raw, N_QUESTIONS),
            }
            done += 1
            if args.show:
                print(f"  [{doc_id} | {heading}] {entries[chunk_key(search_text)]['questions']}")
            if not args.no_save and done % 5 == 0:
                save(path, args.model, entries)
        elapsed = time.perf_counter() - t0
        if not args.no_save and done:
            save(path, args.model, entries)
        if done:
            print(
                f"{corpus.name}: {done} chunks in {elapsed:.1f} s: {done / elapsed:.2f} chunks/s, "
                f"{elapsed / done:.2f} s/chunk; {prompt_tokens / done:.0f} prompt + {gen_tokens / done:.0f} "
                f"generated tokens per chunk ({args.model}, {args.threads} threads, "
                f"loadavg {Path('/proc/loadavg').read_text().split()[0:3]})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
