"""Query handling for retrieval: user text → a safe FTS5 expression, and rank fusion.

User text never reaches FTS5's MATCH as is. `fts_query` keeps only word characters, drops
common English stop words (unless nothing else is left), and writes each remaining term as a
quoted string joined by OR: `"bearing" OR "temperature"`. Quotes, `NEAR`, `*`, `-`, `:`,
parentheses and column filters are thereby plain text, so no query can raise an FTS5 syntax
error; BM25 then ranks chunks matching more (and rarer) terms first.

The full-text index has two columns, a chunk's heading path and its own text; BM25 counts a term in
the heading path `FTS_COLUMN_WEIGHTS[0]` = 2 times (headings name what a section is about). Measured by
`bench/rag_eval.py` on the union of both evaluation sets (112 questions), keyword recall@5 0.783 → 0.810,
MRR@10 0.668 → 0.674 (weights 1.5 to 3 all gain; 2 is the middle).

`reciprocal_rank_fusion` merges ranked lists by the sum of weight / (k + rank) (Cormack et al.). The
store fuses the top 40 of the keyword and vector rankings (`top_k` x 4 when that is more) with wordllama's
vectors by k = 10 and weights 1.5 (keyword) and 1 (vector), with MiniLM's by k = 60 and weights 1.5 and
1: chosen on the union of both sets as the best union recall@5 then MRR@10 among settings whose hybrid
is at least its keyword and its vector ranking in both metrics on each set (`fusion_for`).

Identifiers (identifiers.py: alarm codes, part, model and version numbers, option names, values with units)
are matched exactly, as FTS5 phrases over the index's tokens, and in hybrid mode the chunks that
hold a selective one (held by at most `IDENTIFIER_MAX_CHUNKS` = 3 chunks of the collection) come first
(`place_identifier_matches`): more identifiers, then identifiers in the heading path, then fused rank.
"A03" on an alarm list is selective; "TC-5", named on every page of the controller's manual, is not, and
neither is "amd64" in a question about architectures (held by 4 of 358 chunks in rag_corpus_manuals). 3 is
the largest limit that changes no rank for the worse on the three tuning sets; 5 moved that amd64 question
from rank 1 to 5. Measured (wordllama hybrid, MRR@10): rag_corpus_debian 0.677 → 0.686, others unchanged.
It corrects the fusion (vectors do not see identifiers; BM25 already ranks A03 first): keyword and vector
modes stay the plain parts that fusion takes, which `bench/rag_eval.py` compares hybrid with.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, TypeVar

from edgefleet.node.knowledge.errors import InvalidInput
from edgefleet.proto.input_limits import brief

Mode = Literal["hybrid", "keyword", "vector"]
MODES: tuple[Mode, ...] = ("hybrid", "keyword", "vector")
MAX_QUERY_CHARS = 2000
MAX_TERMS = 32
FTS_COLUMN_WEIGHTS = (2.0, 1.0)
"""BM25 weights of the full-text columns: heading path, text (see the module doc)."""
RRF_K = 10
HYBRID_WEIGHTS = (1.5, 1.0)
"""Keyword, vector: the weights of the two rankings in hybrid retrieval (see the module doc)."""
FUSION_BY_EMBEDDER: dict[str, tuple[int, tuple[float, float]]] = {
    "wordllama": (RRF_K, HYBRID_WEIGHTS),
    "minilm": (60, (1.5, 1.0)),
}
"""(k, (keyword weight, vector weight)) by embedder kind (the identity's prefix), chosen by the same
rule on the union of both sets."""
IDENTIFIER_MAX_CHUNKS = 3
# The order retrieve() gives for the same store and query: part of the retrieval cache's key, so a node
# upgraded to another ranking never answers from results the old one computed. Bump it with any change
# to the ranking (fusion weights, identifier placement, query analysis). 2: identifiers placed first.
RANKING_VERSION = 2
"""A query identifier held by at most this many chunks of the collection puts them first (see the module doc)."""
T = TypeVar("T", bound=Hashable)

_WORD_RE = re.compile(r"\w+", re.UNICODE)

# Function words only: words such as on, off, up, down, not, no, over, under, before and after carry meaning
# in technical questions ("turn it off", "no flow") and stay in the query.
# fmt: off
STOP_WORDS = frozenset((
    "a", "am", "an", "and", "any", "are", "as", "at", "be", "been", "being", "both", "but", "by", "can",
    "could", "did", "do", "does", "doing", "each", "for", "from", "had", "has", "have", "having", "he", "her",
    "here", "hers", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "my", "of",
    "or", "other", "our", "own", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "those", "to", "was", "we", "were", "what", "when", "where",
    "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
))
# fmt: on


def normalise_query(query: str) -> str:
    """The query as validated and as keyed in caches: NFC, whitespace collapsed."""
    if not isinstance(query, str):
        raise InvalidInput(f"the query must be text, got {type(query).__name__}")
    text = " ".join(unicodedata.normalize("NFC", query).split())
    if not text:
        raise InvalidInput("the query is empty: ask a question or give some keywords")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"the query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    return text


def query_terms(query: str) -> list[str]:
    """Lower-cased word terms of the query, stop words dropped unless they are all there is, deduplicated."""
    words = [w.lower() for w in _WORD_RE.findall(query)]
    kept = [w for w in words if w not in STOP_WORDS] or words
    seen: dict[str, None] = {}
    for w in kept:
        seen.setdefault(w, None)
    return list(seen)[:MAX_TERMS]


def fts_query(query: str) -> str | None:
    """A safe FTS5 MATCH expression for `query`, or None when it holds no word at all."""
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[T]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[T, float]]:
    """Items of all rankings by the sum of weight/(k + rank) (rank from 1), best first; ties keep first-seen order."""
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    scores: dict[T, float] = {}
    for i, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[i]
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def place_identifier_matches(
    ranked: Sequence[tuple[T, float]], matches: Mapping[T, tuple[int, int]]
) -> list[tuple[T, float]]:
    """`ranked` with the chunks holding the query's selective identifiers first (`queries.identifier_matches`).

    Those go by the number of identifiers they hold, then how many of them are in their heading path, then
    their place in `ranked` (absent ones after present ones, in `matches`' order); the rest keep their order.
    A placed item's score is 1 per place above the best score of `ranked`, so scores still fall with rank.
    """
    if not matches:
        return list(ranked)
    position = {item: i for i, (item, _) in enumerate(ranked)}
    order = {item: i for i, item in enumerate(matches)}
    placed = sorted(
        matches, key=lambda it: (-matches[it][0], -matches[it][1], position.get(it, len(ranked) + order[it]))
    )
    top = max((score for _, score in ranked), default=0.0)
    rest = [(item, score) for item, score in ranked if item not in matches]
    return [(item, top + len(placed) - i) for i, item in enumerate(placed)] + rest


def fusion_for(embedder_identity: str) -> tuple[int, tuple[float, float]]:
    """The fusion (k, weights) for vectors of this embedder; the wordllama setting for any other."""
    return FUSION_BY_EMBEDDER.get(embedder_identity.partition(":")[0], (RRF_K, HYBRID_WEIGHTS))


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise InvalidInput(f"unknown retrieval mode {brief(mode)}: use one of {', '.join(MODES)}")
    return mode


def check_top_k(top_k: int, limit: int = 50) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
        raise InvalidInput(f"top_k must be an integer from 1 to {limit}, got {brief(top_k)}")
    return top_k
