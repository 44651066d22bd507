"""The knowledge database's schema (its migrations) and the typed records the store returns."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import unquote

from edgefleet.node.knowledge.errors import InvalidInput, ReadOnlyCollection

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE collections (
            name TEXT PRIMARY KEY, version TEXT NOT NULL, revision INTEGER NOT NULL,
            embedder TEXT NOT NULL, dimensions INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)""",
        """CREATE TABLE documents (
            collection TEXT NOT NULL, doc_id TEXT NOT NULL, metadata TEXT NOT NULL, sha256 TEXT NOT NULL,
            n_chars INTEGER NOT NULL, n_chunks INTEGER NOT NULL, chunker TEXT NOT NULL, updated REAL NOT NULL,
            PRIMARY KEY (collection, doc_id))""",
        """CREATE TABLE chunks (
            id INTEGER PRIMARY KEY, collection TEXT NOT NULL, doc_id TEXT NOT NULL, idx INTEGER NOT NULL,
            heading TEXT NOT NULL, text TEXT NOT NULL, search_text TEXT NOT NULL,
            UNIQUE (collection, doc_id, idx))""",
        """CREATE VIRTUAL TABLE chunks_fts USING fts5(
            search_text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, search_text) VALUES (new.id, new.search_text); END""",
        """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text); END""",
        """CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
            INSERT INTO chunks_fts(rowid, search_text) VALUES (new.id, new.search_text); END""",
        """CREATE TABLE vectors (
            chunk_rowid INTEGER PRIMARY KEY, collection TEXT NOT NULL, embedder TEXT NOT NULL,
            embedding BLOB NOT NULL)""",
        "CREATE INDEX vectors_collection ON vectors(collection)",
    ],
    # 2: the page a chunk comes from (documents of format "pages", e.g. a PDF's text layer); NULL otherwise.
    ["ALTER TABLE chunks ADD COLUMN page INTEGER"],
    # 3: the full-text index in two columns, the heading path and the chunk's own text, so BM25 can weigh a
    # match in the headings above one in the body (queries.keyword_ranking, search.FTS_COLUMN_WEIGHTS).
    [
        "DROP TRIGGER chunks_fts_insert",
        "DROP TRIGGER chunks_fts_delete",
        "DROP TRIGGER chunks_fts_update",
        "DROP TABLE chunks_fts",
        """CREATE VIRTUAL TABLE chunks_fts USING fts5(
            heading, text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text); END""",
        """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);
            END""",
        """CREATE TRIGGER chunks_fts_update AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);
            INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text); END""",
        "INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')",
    ],
    # 4: the version of the signed knowledge bundle a collection was installed from (install_collection);
    # NULL for a collection made through Ingest. An installed collection is read-only to Ingest and
    # DeleteDocuments: only a new bundle (or its removal) changes it.
    ["ALTER TABLE collections ADD COLUMN bundle_version TEXT"],
]

_CHUNK_ID_RE = re.compile(r"^([^/#%\s]+)/([^#]+)#(\d+)$")


def _escaped(c: str) -> bool:
    return c in "%#" or c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")


def escape_doc_id(doc_id: str) -> str:
    """`doc_id` as written in a chunk id: `%`, `#`, white space and control characters percent-encoded (UTF-8).

    Letters of any script, `/`, `(`, `)` and the like stay as they are, so `manuals/pump 3.pdf`
    is cited as `manuals/pump%203.pdf`, and an id the old rules allowed is written unchanged.
    """
    return "".join("".join(f"%{b:02X}" for b in c.encode("utf-8")) if _escaped(c) else c for c in doc_id)


def chunk_id(collection: str, doc_id: str, index: int) -> str:
    """The stable id an answer cites: `<collection>/<escaped doc_id>#<index>` (see escape_doc_id)."""
    return f"{collection}/{escape_doc_id(doc_id)}#{index}"


def parse_chunk_id(value: str) -> tuple[str, str, int]:
    """(collection, doc_id, index) of a chunk id; the document id unescaped exactly."""
    m = _CHUNK_ID_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidInput(f"chunk id {value!r} is not of the form <collection>/<doc_id>#<index>")
    return m.group(1), unquote(m.group(2), errors="strict"), int(m.group(3))


@dataclass(frozen=True)
class IngestResult:
    chunks: int
    """Chunks written."""
    documents: int
    """Documents written (added or replaced)."""
    unchanged: int = 0
    """Documents skipped because text, metadata and chunking were the same as stored."""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    version: str
    documents: int
    chunks: int
    embedder: str
    dimensions: int
    revision: int
    """Counts every change to the collection, so it tells two states of one version apart."""
    created: float
    updated: float
    bundle_version: str | None = None
    """The signed knowledge bundle it was installed from (then read-only to Ingest/DeleteDocuments), or None."""

    @property
    def cache_version(self) -> str:
        """What cache keys should use as the collection version: changes with any change to the content."""
        return f"{self.version}#r{self.revision}"


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    score: float
    text: str
    heading: str
    metadata: dict[str, str] = field(default_factory=dict)
    collection: str = ""
    index: int = 0


def check_writable(info: CollectionInfo | None) -> None:
    """ReadOnlyCollection for a collection installed from a signed bundle: Ingest and DeleteDocuments
    may not change it, whoever calls (the bundle is what the site signed)."""
    if info is not None and info.bundle_version is not None:
        raise ReadOnlyCollection(
            f"collection {info.name} was installed from a signed knowledge bundle (version {info.bundle_version}); "
            "change it by pushing a new bundle (edgefleet fleet push-knowledge)"
        )
