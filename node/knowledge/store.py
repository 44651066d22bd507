"""The node's offline knowledge store: collections of documents, chunked, indexed and retrievable.

One SQLite file (WAL, `synchronous=FULL`) holds collections, documents, chunks, an FTS5 index
over the chunks (BM25) and their vectors (`vectors.py`: sqlite-vec, or numpy where the
extension cannot load). The SQL lives in `queries.py`, the schema in `schema.py`.

Concurrency: the store is called from several gRPC threads. Mutations (ingest, delete,
install, re-embed) are serialised by one lock and run on the writer connection; each state
change is one `BEGIN IMMEDIATE` transaction. Reads run on pooled reader connections inside a
`BEGIN` snapshot, so a retrieval never sees half a document or half an installed collection
and never waits for a mutation.

Atomicity: `ingest` replaces each document in one transaction (old chunks out, new chunks and
vectors in); `install_collection` swaps a whole collection in one transaction. Chunking and
embedding, the slow parts, happen before the transaction opens, and every input is validated
before anything is written; a failure or a crash leaves the previous state intact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.node.errors import StorageFull
from edgefleet.node.knowledge import queries as q
from edgefleet.node.knowledge import sqlite
from edgefleet.node.knowledge.caches import ResponseCache, RetrievalCache
from edgefleet.node.knowledge.chunking import ChunkingConfig
from edgefleet.node.knowledge.documents import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Document,
    PreparedDocument,
    check_collection,
    check_doc_id,
    check_version,
    prepare_documents,
)
from edgefleet.node.knowledge.embedders import Embedder
from edgefleet.node.knowledge.errors import CorruptDatabase, EmbedderMismatch, InvalidInput, NotFoundError
from edgefleet.node.knowledge.ranking import rank_chunks
from edgefleet.node.knowledge.reembed import reembed_collection
from edgefleet.node.knowledge.schema import MIGRATIONS, CollectionInfo, Hit, IngestResult, check_writable
from edgefleet.node.knowledge.search import Mode, check_mode, check_top_k, normalise_query
from edgefleet.node.knowledge.space import SpaceReserve
from edgefleet.node.knowledge.vectors import Backend, VectorIndex
from edgefleet.plumbing import failpoints
from edgefleet.proto.input_limits import brief

log = logging.getLogger("edgefleet.node.knowledge")

VectorBackendChoice = Literal["auto", "sqlite-vec", "numpy"]


class KnowledgeStore:
    """Collections of documents in one SQLite file; see the module doc.

    `vector_backend`: "auto" (sqlite-vec when it loads, else numpy), "sqlite-vec" (raise
    BackendUnavailable when it cannot load) or "numpy". `retrieval_cache` is consulted by
    `retrieve`; both caches lose a collection's entries whenever it changes.
    """

    def __init__(
        self,
        path: Path,
        embedder: Embedder,
        *,
        vector_backend: VectorBackendChoice = "auto",
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        chunking: ChunkingConfig | None = None,
        retrieval_cache: RetrievalCache | None = None,
        response_cache: ResponseCache | None = None,
        check_on_open: bool = True,
        previous_embedder: Callable[[str], Embedder | None] | None = None,
    ) -> None:
        if vector_backend not in ("auto", "sqlite-vec", "numpy"):
            raise InvalidInput(f"vector_backend must be auto, sqlite-vec or numpy, got {vector_backend!r}")
        self.path = Path(path)
        self.embedder = embedder
        self.max_document_bytes = max_document_bytes
        self.chunking = chunking or ChunkingConfig()
        self.retrieval_cache = retrieval_cache
        self.response_cache = response_cache
        self._previous_embedder = previous_embedder
        self._previous: dict[str, Embedder | None] = {}
        self._previous_lock = threading.Lock()
        writer, vec = sqlite.open_knowledge_database(
            self.path, MIGRATIONS, load_vec=vector_backend != "numpy", check=check_on_open
        )
        if vector_backend == "sqlite-vec" and not vec:
            writer.close()
            sqlite.require_vec(vec)
        if vector_backend == "auto" and not vec:
            log.warning("sqlite-vec unavailable, vectors are scanned with numpy", extra={"path": str(self.path)})
        self._db = sqlite.Connections(self.path, writer, load_vec=vec)
        self.reserve = SpaceReserve(self.path.with_name(self.path.name + ".reserve"))
        self._vectors = VectorIndex("sqlite-vec" if vec else "numpy")
        if vec:
            with self._db.write() as conn:
                if not self._vectors.in_step(conn):
                    self._vectors.rebuild_index(conn)
        log.info(
            "knowledge store open",
            extra={"path": str(self.path), "backend": self.search_backend, "embedder": embedder.identity},
        )

    @property
    def search_backend(self) -> Backend:
        """ "sqlite-vec" or "numpy": how vector search runs in this process."""
        return self._vectors.backend

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def rebuild(cls, path: Path) -> Path:
        """Move a (damaged) database aside to `<name>.corrupt-<UTC time>` and create an empty one.

        Returns where the old file went. The collections must be installed again.
        """
        path = Path(path)
        moved = sqlite.move_aside(path)
        conn, _ = sqlite.open_knowledge_database(path, MIGRATIONS, check=False)
        conn.close()
        log.warning("knowledge database rebuilt empty", extra={"path": str(path), "moved_to": str(moved)})
        return moved

    # -- collections ------------------------------------------------------------------------
    @staticmethod
    def _require(conn: sqlite.Connection, name: str) -> CollectionInfo:
        info = q.collection_info(conn, name)
        if info is None:
            raise NotFoundError(f"collection {brief(name)} does not exist on this node; install or ingest it first")
        return info

    def list_collections(self) -> list[CollectionInfo]:
        with self._db.read() as conn:
            return [info for n in q.collection_names(conn) if (info := q.collection_info(conn, n)) is not None]

    def collection_info(self, name: str) -> CollectionInfo:
        check_collection(name)
        with self._db.read() as conn:
            return self._require(conn, name)

    def _embedder_for(self, info: CollectionInfo) -> Embedder | None:
        """The embedder of the collection's vectors: this store's, or the one it is being re-embedded from
        (rebuilt by `previous_embedder` from its identity), or None when that one cannot be had."""
        if not info.chunks or info.embedder == self.embedder.identity:
            return self.embedder
        with self._previous_lock:
            if info.embedder not in self._previous:
                found = self._previous_embedder(info.embedder) if self._previous_embedder else None
                self._previous[info.embedder] = found if found is None or found.identity == info.embedder else None
            return self._previous[info.embedder]

    def forget_previous_embedders(self) -> None:
        """Let go of the embedders kept for collections being re-embedded (their models' memory)."""
        self._previous.clear()

    def _changed(self, collection: str) -> None:
        for cache in (self.retrieval_cache, self.response_cache):
            if cache is not None:
                try:
                    cache.invalidate_collection(collection)
                except sqlite.DatabaseError as e:  # keys carry the collection version: stale rows only waste room
                    log.warning("cache entries not removed", extra={"collection": collection, "reason": str(e)})

    # -- writes -----------------------------------------------------------------------------
    def _embed(self, prepared: Sequence[PreparedDocument], embedder: Embedder | None = None) -> list[np.ndarray]:
        embedder = embedder or self.embedder
        texts = [c.search_text for p in prepared for c in p.chunks]
        matrix = embedder.embed(texts) if texts else np.zeros((0, embedder.dimensions), np.float32)
        out, start = [], 0
        for p in prepared:
            out.append(matrix[start : start + len(p.chunks)])
            start += len(p.chunks)
        return out

    def _upsert(
        self, conn: sqlite.Connection, name: str, version: str | None, label: CollectionInfo | None = None
    ) -> None:
        """Create or touch the collection; `label`: keep the embedder it names (a collection being re-embedded)."""
        embedder, dims = (
            (label.embedder, label.dimensions) if label else (self.embedder.identity, self.embedder.dimensions)
        )
        q.upsert_collection(conn, name, version, embedder, dims)

    def ingest(self, collection: str, docs: Sequence[Document], version: str | None = None) -> IngestResult:
        """Add or replace documents; each one is replaced wholly in one transaction.

        Unchanged documents (same text, metadata and chunking) are skipped. `version`, when
        given, becomes the collection's version; a new collection without one gets "0".
        A collection installed from a signed bundle is refused (ReadOnlyCollection).
        """
        check_collection(collection)
        if version is not None:
            check_version(version)
        with self._db.read() as conn:  # refused before the work (and again under the write lock)
            check_writable(q.collection_info(conn, collection))
        prepared = prepare_documents(docs, self.max_document_bytes, self.chunking)
        with self._db.write_lock:
            info = q.collection_info(self._db.writer, collection)
            check_writable(info)
            existing: dict[str, tuple[str, str, str]] = {}
            embedder, label = self.embedder, None
            if info is not None:
                existing = q.stored_documents(self._db.writer, collection)
                if info.chunks and info.embedder != self.embedder.identity:  # being re-embedded: stay in its space
                    embedder, label = self._embedder_for(info) or self.embedder, info
            changed = [p for p in prepared if existing.get(p.id) != (p.sha256, p.metadata_json, p.chunker)]
            dims = info.dimensions if info is not None else self.embedder.dimensions
            for doc, matrix in zip(changed, self._embed(changed, embedder), strict=True):
                with self._db.write() as conn:
                    self._upsert(conn, collection, version, label)
                    q.delete_document(conn, self._vectors, collection, dims, doc.id)
                    failpoints.hit("knowledge.ingest.write")  # inside the write transaction
                    q.insert_document(conn, self._vectors, collection, embedder.identity, doc, matrix)
                dims = label.dimensions if label else self.embedder.dimensions
            if not changed and (info is None or (version is not None and version != info.version)):
                with self._db.write() as conn:
                    self._upsert(conn, collection, version, label)
            self._changed(collection)
        result = IngestResult(sum(len(p.chunks) for p in changed), len(changed), len(prepared) - len(changed))
        log.info("documents ingested", extra={"collection": collection, **asdict(result)})
        return result

    def install_collection(self, name: str, version: str, docs: Sequence[Document]) -> IngestResult:
        """Replace collection `name` with exactly `docs` as `version`, in one transaction.

        Until it commits, readers see the old version whole; a bad document or a crash leaves it untouched.
        """
        check_collection(name)
        check_version(version)
        prepared = prepare_documents(docs, self.max_document_bytes, self.chunking)
        with self._db.write_lock:
            matrices = self._embed(prepared)
            with self._db.write() as conn:
                old = q.collection_info(conn, name)
                if old is not None:
                    q.delete_collection_content(conn, self._vectors, name, old.dimensions)
                self._upsert(conn, name, version)
                q.mark_installed(conn, name, version)  # read-only to Ingest/DeleteDocuments from now on
                for doc, matrix in zip(prepared, matrices, strict=True):
                    q.insert_document(conn, self._vectors, name, self.embedder.identity, doc, matrix)
            self._changed(name)
        result = IngestResult(sum(len(p.chunks) for p in prepared), len(prepared), 0)
        log.info(
            "collection installed",
            extra={"collection": name, "version": version, "documents": result.documents, "chunks": result.chunks},
        )
        return result

    def delete_documents(self, collection: str, ids: Sequence[str]) -> int:
        """Delete documents by id (in one transaction); returns how many existed.

        A collection installed from a signed bundle is refused (ReadOnlyCollection)."""
        check_collection(collection)
        if isinstance(ids, str):
            raise InvalidInput("ids must be a list of document ids, not one string")
        for doc_id in ids:
            check_doc_id(doc_id)
        try:
            deleted = self._delete(collection, ids)
        except StorageFull:  # a full disk: give up the reserve, so the deletion can commit, and try once more
            if not self.reserve.release():
                raise
            deleted = self._delete(collection, ids)
        self._changed(collection)
        if deleted:
            if not self._db.reclaim() and self.reserve.release():
                self._db.reclaim()  # the checkpoint needed room to write the WAL's pages into the file
            self.reserve.restore()
        log.info("documents deleted", extra={"collection": collection, "documents": deleted})
        return deleted

    def _delete(self, collection: str, ids: Sequence[str]) -> int:
        with self._db.write() as conn:
            info = self._require(conn, collection)
            check_writable(info)
            deleted = sum(
                q.delete_document(conn, self._vectors, collection, info.dimensions, d) for d in dict.fromkeys(ids)
            )
            if deleted:
                q.bump_revision(conn, collection)
        return deleted

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its documents."""
        check_collection(name)
        with self._db.write() as conn:
            info = self._require(conn, name)
            q.delete_collection_content(conn, self._vectors, name, info.dimensions)
            conn.execute("DELETE FROM collections WHERE name = ?", (name,))
        self._changed(name)
        log.info("collection deleted", extra={"collection": name})

    def reembed(self, collection: str) -> int:
        """Re-embed every chunk of `collection` with this store's embedder; returns chunks (see reembed.py).

        Embedding runs outside the write lock; the old vectors serve until the switch, one transaction.
        """
        check_collection(collection)
        self.collection_info(collection)  # NotFound when there is none
        return reembed_collection(self, collection) or 0

    def stale_collections(self) -> list[str]:
        """Collections whose vectors came from another embedder than this store's."""
        return [c.name for c in self.list_collections() if c.embedder != self.embedder.identity]

    def ensure_embedder(self) -> list[str]:
        """Re-embed, now, every collection whose vectors came from another embedder; returns their names.

        The node does this in the background instead (`reembed.ReembedWorker`)."""
        stale = self.stale_collections()
        for name in stale:
            self.reembed(name)
        return stale

    # -- reads ------------------------------------------------------------------------------
    def get_chunk(self, chunk_id: str) -> Hit:
        """The chunk `<collection>/<doc_id>#<index>` (score 0), e.g. to show a cited source."""
        with self._db.read() as conn:
            hit = q.hit_by_chunk_id(conn, chunk_id)
        if hit is None:
            raise NotFoundError(f"chunk {brief(chunk_id)} does not exist")
        return hit

    def retrieve(self, query: str, collection: str, top_k: int = 5, mode: Mode = "hybrid") -> list[Hit]:
        """The `top_k` (1..50) chunks of `collection` best matching `query`, best first.

        Scores: keyword = -BM25 (higher is better), vector = cosine similarity, hybrid =
        weighted reciprocal rank fusion (search.py) of the keyword and vector rankings, with the chunks holding
        the query's selective identifiers (alarm codes, part numbers, option names: identifiers.py) first,
        scored above the rest; keyword and vector modes are the two parts as fusion takes them. Any text is a
        valid query: FTS5 syntax in it is neutralised (see search.py).
        """
        failpoints.hit("knowledge.retrieve")  # a slow search, in the worker thread
        check_collection(collection)
        check_top_k(top_k)
        mode = check_mode(mode)
        query = normalise_query(query)
        cache = self.retrieval_cache
        with self._db.read() as conn:
            info = self._require(conn, collection)
            embedder = self._embedder_for(info) if mode != "keyword" else None
            if mode == "vector" and embedder is None:
                raise EmbedderMismatch(
                    f"collection {info.name!r} was embedded with {info.embedder}, this store runs "
                    f"{self.embedder.identity}; re-embed it first (KnowledgeStore.reembed or ensure_embedder)"
                )
            if mode == "hybrid" and embedder is None:  # being re-embedded, the old embedder gone: keyword ranking
                log.debug("keyword ranking until re-embedded", extra={"collection": collection, "from": info.embedder})
            used = embedder.identity if embedder is not None else "none"
            key = (collection, info.cache_version, used, query, top_k, mode)
            if cache is not None and (cached := cache.get(*key)) is not None:
                found = [q.hit_by_chunk_id(conn, cid, score) for cid, score in cached]
                if all(h is not None for h in found):  # else a stale entry: search again
                    return [h for h in found if h is not None]
            qvec = embedder.embed([query])[0] if embedder is not None else None
            ranked = rank_chunks(conn, self._vectors, info, query, qvec, used, top_k, mode)
            hits = q.hits_by_rowid(conn, ranked[:top_k])
        if cache is not None:
            cache.put(*key, [(h.chunk_id, h.score) for h in hits])
        return hits

    # -- health -----------------------------------------------------------------------------
    def integrity_check(self) -> str:
        """ "ok", or the problems found: SQLite's integrity check, the FTS index, chunks, vectors, documents."""
        problems: list[str] = []
        try:
            with self._db.write() as conn:
                problems = q.consistency_problems(conn) + self._vectors.index_problems(conn)
                raise _Rollback
        except _Rollback:
            pass
        except CorruptDatabase as e:
            problems.append(str(e))
        return "ok" if not problems else "; ".join(problems)


class _Rollback(Exception):
    """Ends integrity_check's transaction without committing (the FTS check is written as an INSERT)."""
