"""One query's ranking of a collection's chunks: (rowid, score), best first (the policy is in search.py).

keyword: BM25 over the FTS index; vector: nearest neighbours of the query's embedding; hybrid: the
two fused by weighted reciprocal rank fusion, the chunks holding the query's selective identifiers
first. With no query vector (keyword mode, or a collection being re-embedded) the keyword ranking.
"""

from __future__ import annotations

import numpy as np

from edgefleet.node.knowledge import queries as q
from edgefleet.node.knowledge.identifiers import extract_identifiers
from edgefleet.node.knowledge.schema import CollectionInfo
from edgefleet.node.knowledge.search import (
    IDENTIFIER_MAX_CHUNKS,
    Mode,
    fusion_for,
    place_identifier_matches,
    reciprocal_rank_fusion,
)
from edgefleet.node.knowledge.sqlite import Connection
from edgefleet.node.knowledge.vectors import VectorIndex


def rank_chunks(
    conn: Connection,
    vectors: VectorIndex,
    info: CollectionInfo,
    query: str,
    qvec: np.ndarray | None,
    embedder_identity: str,
    top_k: int,
    mode: Mode,
) -> list[tuple[int, float]]:
    """(rowid, score) of `info`'s chunks for `query`, best first (`top_k` or more where there are as many)."""
    collection = info.name
    if qvec is None:
        ranked = q.keyword_ranking(conn, collection, query, top_k)
    elif mode == "vector":
        ranked = vectors.search(conn, collection, info.revision, qvec, top_k)
    else:
        depth = min(max(top_k * 4, 40), 200)
        kw = q.keyword_ranking(conn, collection, query, depth)
        vec = vectors.search(conn, collection, info.revision, qvec, depth)
        k, weights = fusion_for(embedder_identity)
        ranked = reciprocal_rank_fusion([[r for r, _ in kw], [r for r, _ in vec]], k=k, weights=weights)
    if mode == "hybrid":  # the chunks holding the question's identifiers first (search.py)
        identifiers = extract_identifiers(query)
        if identifiers:
            matches = q.identifier_matches(conn, collection, identifiers, IDENTIFIER_MAX_CHUNKS)
            ranked = place_identifier_matches(ranked, matches)
    return ranked
