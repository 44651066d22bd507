"""Query sanitising for FTS5, rank fusion, parameter checks, and hostile queries against a real store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgefleet.node.knowledge import InvalidInput, KnowledgeStore, WordLlamaEmbedder
from edgefleet.node.knowledge.search import (
    check_mode,
    check_top_k,
    fts_query,
    normalise_query,
    query_terms,
    reciprocal_rank_fusion,
)

FTS_SYNTAX = [
    "bearing",
    '"unbalanced',
    "NEAR(a b)",
    "pump*",
    "-x",
    "col:umn",
    "(a OR b",
    "a AND OR NOT b",
    "^start",
    "search_text: seal",
    "{search_text} : seal",
    "'single quote",
    'seal" OR "x',
    "???",
    "a" * 500,
    "Lagerschäden prüfen",
]
SAFE = re.compile(r'^"[^"]+"( OR "[^"]+")*$')


@pytest.mark.parametrize("query", FTS_SYNTAX)
def test_fts_query_is_only_quoted_terms(query: str) -> None:
    expr = fts_query(query)
    if expr is not None:
        assert SAFE.match(expr), expr


def test_fts_query_terms() -> None:
    assert fts_query("How do I replace the seal?") == '"replace" OR "seal"'
    assert fts_query("pump* -x NEAR(a b)") == '"pump" OR "x" OR "near" OR "b"'  # "a" is a stop word
    assert fts_query("turn it off") == '"turn" OR "off"'  # on/off/up/down carry meaning
    assert fts_query("what is it") == '"what" OR "is" OR "it"'  # only stop words: keep them
    assert fts_query("*** ---") is None
    assert query_terms("Seal seal SEAL") == ["seal"]


def test_normalise_query() -> None:
    assert normalise_query("  pump \n\t seal ") == "pump seal"
    for bad in ["", "   ", "\n"]:
        with pytest.raises(InvalidInput, match="empty"):
            normalise_query(bad)
    with pytest.raises(InvalidInput, match="limit"):
        normalise_query("x" * 5000)


def test_reciprocal_rank_fusion() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]])
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    assert fused[0][1] == pytest.approx(1 / 12 + 1 / 11)
    assert fused[1][1] == pytest.approx(1 / 11)
    assert reciprocal_rank_fusion([[], []]) == []
    weighted = reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=10, weights=[1.5, 1.0])
    assert [item for item, _ in weighted] == ["a", "b"]
    assert weighted[0][1] == pytest.approx(1.5 / 11 + 1 / 12)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


@pytest.mark.parametrize("top_k", [0, 51, -1, True, 2.5, "5"])
def test_top_k_out_of_range(top_k: object) -> None:
    with pytest.raises(InvalidInput, match="top_k"):
        check_top_k(top_k)  # type: ignore[arg-type]


def test_top_k_and_mode_accepted() -> None:
    assert check_top_k(1) == 1 and check_top_k(50) == 50
    assert check_mode("hybrid") == "hybrid"
    with pytest.raises(InvalidInput, match="mode"):
        check_mode("semantic")


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
@pytest.mark.parametrize("query", ["bearing", '"unbalanced', "NEAR(a b)", "pump*", "-x", "col:umn", "(a OR b"])
def test_hostile_queries_never_raise(store: KnowledgeStore, query: str, mode: str) -> None:
    hits = store.retrieve(query, "manual", 5, mode)  # type: ignore[arg-type]
    assert isinstance(hits, list)
    assert len(hits) <= 5
    if query == "bearing" and mode != "vector":
        assert hits[0].doc_id == "pump-manual"


def test_keyword_search_uses_stemming(store: KnowledgeStore) -> None:
    hits = store.retrieve("phases reversed", "manual", 3, "keyword")
    assert hits[0].chunk_id == "manual/alarm-codes#1"


def test_a_match_in_the_heading_path_outranks_one_in_the_text(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    from edgefleet.node.knowledge import Document

    docs = [
        Document("body", "# Pump\n\n## Maintenance\n\nCheck the impeller and the seal every year.", {}, "markdown"),
        Document("heading", "# Pump\n\n## Impeller\n\nCheck it and the seal every year.", {}, "markdown"),
    ]
    with KnowledgeStore(tmp_path / "k.sqlite", embedder) as s:
        s.ingest("kb", docs)
        hits = s.retrieve("impeller", "kb", top_k=2, mode="keyword")
        assert [h.doc_id for h in hits] == ["heading", "body"]


def test_an_existing_store_gets_the_two_column_index(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    from edgefleet.node.knowledge import Document, sqlite
    from edgefleet.node.knowledge.schema import MIGRATIONS

    path = tmp_path / "k.sqlite"
    conn, _ = sqlite.open_knowledge_database(path, MIGRATIONS[:2], check=False)  # a store from before migration 3
    conn.close()
    with KnowledgeStore(path, embedder, check_on_open=False) as s:
        s.ingest("kb", [Document("a", "# Pump\n\n## Bearings\n\nGrease them twice a year.", {}, "markdown")])
    # Take the database back to schema 2 with its single-column index over the stored chunks, then reopen.
    conn, _ = sqlite.open_knowledge_database(path, MIGRATIONS, check=False)
    for sql in ("DROP TRIGGER chunks_fts_insert", "DROP TRIGGER chunks_fts_delete", "DROP TRIGGER chunks_fts_update"):
        conn.execute(sql)
    conn.execute("DROP TABLE chunks_fts")
    for sql in MIGRATIONS[0]:
        if "chunks_fts" in sql:
            conn.execute(sql)
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
    conn.execute("ALTER TABLE collections DROP COLUMN bundle_version")  # and without migration 4's column
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with KnowledgeStore(path, embedder) as s:
        assert s.integrity_check() == "ok"
        assert [h.doc_id for h in s.retrieve("bearings grease", "kb", top_k=1, mode="keyword")] == ["a"]
        s.ingest("kb", [Document("b", "# Valve\n\nClose it slowly.", {}, "markdown")])
        assert [h.doc_id for h in s.retrieve("valve", "kb", top_k=1, mode="keyword")] == ["b"]
