"""The store's SQL, as functions of a connection: collection rows, document writes, reads, consistency."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.node.knowledge.documents import PreparedDocument
from edgefleet.node.knowledge.identifiers import Identifier
from edgefleet.node.knowledge.schema import CollectionInfo, Hit, chunk_id, parse_chunk_id
from edgefleet.node.knowledge.search import FTS_COLUMN_WEIGHTS, fts_query
from edgefleet.node.knowledge.sqlite import Connection
from edgefleet.node.knowledge.vectors import VectorIndex

DEFAULT_VERSION = "0"

_CHUNK_SELECT = (
    "SELECT c.id, c.collection, c.doc_id, c.idx, c.heading, c.text, d.metadata, c.page FROM chunks c "
    "JOIN documents d ON d.collection = c.collection AND d.doc_id = c.doc_id"
)


def collection_info(conn: Connection, name: str) -> CollectionInfo | None:
    row = conn.execute(
        "SELECT name, version, revision, embedder, dimensions, created, updated, bundle_version, "
        "(SELECT count(*) FROM documents d WHERE d.collection = c.name), "
        "(SELECT coalesce(sum(n_chunks), 0) FROM documents d WHERE d.collection = c.name) "
        "FROM collections c WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return None
    name_, version, revision, embedder, dims, created, updated, bundle, docs, chunks = row
    return CollectionInfo(
        name_, version, int(docs), int(chunks), embedder, int(dims), int(revision), created, updated, bundle
    )


def collection_names(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name").fetchall()]


def upsert_collection(conn: Connection, name: str, version: str | None, embedder: str, dimensions: int) -> None:
    """Create the collection row, or bump its revision (and set the version when given)."""
    now = time.time()
    conn.execute(
        "INSERT INTO collections(name, version, revision, embedder, dimensions, created, updated) "
        "VALUES (?, ?, 1, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET version = coalesce(?, version), "
        "revision = revision + 1, embedder = excluded.embedder, dimensions = excluded.dimensions, "
        "updated = excluded.updated",
        (name, version or DEFAULT_VERSION, embedder, dimensions, now, now, version),
    )


def mark_installed(conn: Connection, name: str, bundle_version: str | None) -> None:
    """Record the signed bundle a collection was installed from (None: writable through Ingest)."""
    conn.execute("UPDATE collections SET bundle_version = ? WHERE name = ?", (bundle_version, name))


def bump_revision(conn: Connection, name: str) -> None:
    """Mark a change of the collection's content (its embedder and version stay)."""
    conn.execute("UPDATE collections SET revision = revision + 1, updated = ? WHERE name = ?", (time.time(), name))


def stored_documents(conn: Connection, collection: str) -> dict[str, tuple[str, str, str]]:
    """doc id → (sha256, metadata JSON, chunker signature) of the stored documents."""
    rows = conn.execute(
        "SELECT doc_id, sha256, metadata, chunker FROM documents WHERE collection = ?", (collection,)
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def delete_document(conn: Connection, vectors: VectorIndex, collection: str, dims: int, doc_id: str) -> bool:
    """Delete a document with its chunks and vectors; whether it existed."""
    vectors.delete(conn, dims, "SELECT id FROM chunks WHERE collection = ? AND doc_id = ?", (collection, doc_id))
    conn.execute("DELETE FROM chunks WHERE collection = ? AND doc_id = ?", (collection, doc_id))
    cur = conn.execute("DELETE FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id))
    return bool(cur.rowcount)


def delete_collection_content(conn: Connection, vectors: VectorIndex, collection: str, dims: int) -> None:
    vectors.delete_collection(conn, collection, dims)
    conn.execute("DELETE FROM chunks WHERE collection = ?", (collection,))
    conn.execute("DELETE FROM documents WHERE collection = ?", (collection,))


def insert_document(
    conn: Connection, vectors: VectorIndex, collection: str, embedder: str, doc: PreparedDocument, matrix: np.ndarray
) -> None:
    """Insert a document, its chunks (the FTS index follows by trigger) and their vectors."""
    conn.execute(
        "INSERT INTO documents(collection, doc_id, metadata, sha256, n_chars, n_chunks, chunker, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (collection, doc.id, doc.metadata_json, doc.sha256, len(doc.text), len(doc.chunks), doc.chunker, time.time()),
    )
    conn.executemany(
        "INSERT INTO chunks(collection, doc_id, idx, heading, text, search_text, page) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(collection, doc.id, c.index, c.heading, c.text, c.search_text, c.page) for c in doc.chunks],
    )
    rows = conn.execute(
        "SELECT id FROM chunks WHERE collection = ? AND doc_id = ? ORDER BY idx", (collection, doc.id)
    ).fetchall()
    vectors.write(conn, collection, embedder, [r[0] for r in rows], matrix)


def chunk_texts(conn: Connection, collection: str) -> list[tuple[int, str]]:
    return [
        (int(r[0]), r[1])
        for r in conn.execute(
            "SELECT id, search_text FROM chunks WHERE collection = ? ORDER BY id", (collection,)
        ).fetchall()
    ]


def hit_from_row(row: tuple[Any, ...], score: float) -> Hit:
    _, collection, doc_id, idx, heading, text, metadata, page = row
    meta = json.loads(metadata)
    if page is not None:
        meta["page"] = str(page)
    return Hit(chunk_id(collection, doc_id, idx), doc_id, score, text, heading, meta, collection, idx)


def keyword_ranking(conn: Connection, collection: str, query: str, n: int) -> list[tuple[int, float]]:
    """Chunk rowids of `collection` by BM25 over heading path and text (score = -bm25, higher is better).

    [] when the query has no word.
    """
    expr = fts_query(query)
    if expr is None:
        return []
    # MATERIALIZED: run the full-text query once, then filter by collection. A plain join lets
    # SQLite scan the collection's chunks and probe the FTS index once per chunk (~40x slower, measured).
    # bm25's column weights: a term in the heading path counts FTS_COLUMN_WEIGHTS[0] times, in the text [1] times.
    heading_w, text_w = (float(w) for w in FTS_COLUMN_WEIGHTS)
    rows = conn.execute(
        f"WITH m AS MATERIALIZED (SELECT rowid AS id, bm25(chunks_fts, {heading_w!r}, {text_w!r}) AS s "
        "FROM chunks_fts WHERE chunks_fts MATCH ?) "
        "SELECT m.id, m.s FROM m JOIN chunks c ON c.id = m.id WHERE c.collection = ? ORDER BY m.s, m.id LIMIT ?",
        (expr, collection, n),
    ).fetchall()
    return [(int(rid), -float(s)) for rid, s in rows]


def identifier_matches(
    conn: Connection, collection: str, identifiers: Sequence[Identifier], max_chunks: int
) -> dict[int, tuple[int, int]]:
    """Chunk rowid → (selective identifiers it holds, those of them in its heading path).

    An identifier is selective when at most `max_chunks` chunks of the collection hold it (A03 in an
    alarm list, not TC-5 on every page of the controller's manual); the others are left out.
    """
    found: dict[int, tuple[int, int]] = {}
    for ident in identifiers:
        phrase = ident.fts_phrase()
        rows = conn.execute(
            "WITH m AS MATERIALIZED (SELECT rowid AS id FROM chunks_fts WHERE chunks_fts MATCH ?) "
            "SELECT m.id FROM m JOIN chunks c ON c.id = m.id WHERE c.collection = ? LIMIT ?",
            (phrase, collection, max_chunks + 1),
        ).fetchall()
        if not rows or len(rows) > max_chunks:
            continue
        ids = [int(r[0]) for r in rows]
        marks = ",".join("?" * len(ids))
        in_heading = {
            int(r[0])
            for r in conn.execute(
                f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid IN ({marks})",
                ("{heading} : " + phrase, *ids),
            ).fetchall()
        }
        for rid in ids:
            n, h = found.get(rid, (0, 0))
            found[rid] = (n + 1, h + (rid in in_heading))
    return found


def hits_by_rowid(conn: Connection, ranked: Sequence[tuple[int, float]]) -> list[Hit]:
    """Hits for (chunk rowid, score) pairs, in the given order."""
    if not ranked:
        return []
    marks = ",".join("?" * len(ranked))
    rows = {r[0]: r for r in conn.execute(f"{_CHUNK_SELECT} WHERE c.id IN ({marks})", [r for r, _ in ranked])}
    return [hit_from_row(rows[rid], score) for rid, score in ranked if rid in rows]


def hit_by_chunk_id(conn: Connection, chunk_id_: str, score: float = 0.0) -> Hit | None:
    collection, doc_id, idx = parse_chunk_id(chunk_id_)
    row = conn.execute(
        f"{_CHUNK_SELECT} WHERE c.collection = ? AND c.doc_id = ? AND c.idx = ?", (collection, doc_id, idx)
    ).fetchone()
    return hit_from_row(row, score) if row is not None else None


def consistency_problems(conn: Connection) -> list[str]:
    """SQLite's integrity check, the FTS index against its content, chunks against vectors and documents.

    Writes (the FTS check is an INSERT command): run it in a transaction that is rolled back.
    """
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
    if problems == ["ok"]:
        problems = []
    try:
        conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    except Exception as e:  # sqlite's DatabaseError from either driver
        problems.append(f"full-text index: {e}")
    checks = [
        (
            "SELECT count(*) FROM chunks c LEFT JOIN vectors v ON v.chunk_rowid = c.id WHERE v.chunk_rowid IS NULL",
            "chunks have no vector",
        ),
        (
            "SELECT count(*) FROM vectors v LEFT JOIN chunks c ON c.id = v.chunk_rowid WHERE c.id IS NULL",
            "vectors belong to no chunk",
        ),
        (
            "SELECT count(*) FROM documents d WHERE n_chunks != "
            "(SELECT count(*) FROM chunks c WHERE c.collection = d.collection AND c.doc_id = d.doc_id)",
            "documents do not have all their chunks",
        ),
        (
            "SELECT count(*) FROM chunks c LEFT JOIN documents d ON d.collection = c.collection "
            "AND d.doc_id = c.doc_id WHERE d.doc_id IS NULL",
            "chunks belong to no document",
        ),
    ]
    for sql, what in checks:
        n = conn.execute(sql).fetchone()[0]
        if n:
            problems.append(f"{n} {what}")
    return problems
