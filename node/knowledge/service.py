"""The node's knowledge service: the store, its caches and embedder, as gRPC and generation use them.

Retrieval in generation: the top chunks of a collection go into the conversation as a system
message that numbers them [1]..[n] under the cite-or-abstain instruction (grounding.py), and the
answer's final chunk lists their chunk ids and the citations the support check found. The
response cache answers a deterministic request (temperature 0) seen before: its key holds the
model's sha256, the adapter and template versions, the collection's content version and the
whole request, so any change to one of them misses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.node.knowledge.caches import (
    CachedResponse,
    ResponseCache,
    RetrievalCache,
    default_cache_path,
    response_cache_key,
)
from edgefleet.node.knowledge.documents import Document
from edgefleet.node.knowledge.embedders import Embedder, embedder_for_identity, make_embedder
from edgefleet.node.knowledge.grounding import Relevance, Source, relevance, source_block
from edgefleet.node.knowledge.reembed import ReembedWorker
from edgefleet.node.knowledge.schema import CollectionInfo, Hit, IngestResult
from edgefleet.node.knowledge.store import KnowledgeStore

log = logging.getLogger("edgefleet.node.knowledge")
DEFAULT_GENERATION_TOP_K = 4
MAX_CONTEXT_CHARS_PER_CHUNK = 1200
EMBEDDERS_DIR = "embedders"
"""Beside knowledge.db: embedding models written once from the wheels that ship them (minilm's GGUF)."""


@dataclass(frozen=True)
class Context:
    """What retrieval gives a generation: the system text, its numbered sources and how relevant they are."""

    text: str
    sources: list[Source]
    version: str  # the collection's cache version
    relevance: Relevance

    @property
    def ids(self) -> list[str]:
        return [s.chunk_id for s in self.sources]


@dataclass(frozen=True)
class EmbedderChoice:
    kind: str  # wordllama | minilm | node | gguf
    model_path: Path | None = None
    threads: int = 2


class KnowledgeService:
    def __init__(
        self,
        path: Path,
        choice: EmbedderChoice,
        node_embed: Callable[[list[str]], list[list[float]]],
        n_embd: int,
        model_sha256: str,
        retrieval_cache_rows: int,
        response_cache_rows: int,
        max_document_bytes: int,
    ) -> None:
        cache_dir = Path(path).parent / EMBEDDERS_DIR
        embedder: Embedder = make_embedder(
            choice.kind,  # type: ignore[arg-type]
            embed_fn=node_embed,
            dimensions=n_embd,
            model_sha256=model_sha256,
            model_path=choice.model_path,
            n_threads=choice.threads,
            cache_dir=cache_dir,
        )

        def previous(identity: str) -> Embedder | None:
            return embedder_for_identity(
                identity,
                cache_dir=cache_dir,
                embed_fn=node_embed,
                dimensions=n_embd,
                model_sha256=model_sha256,
                n_threads=choice.threads,
            )

        cache_path = default_cache_path(path)
        self.responses = ResponseCache(cache_path, max_rows=response_cache_rows)
        self.store = KnowledgeStore(
            path,
            embedder,
            max_document_bytes=max_document_bytes,
            retrieval_cache=RetrievalCache(cache_path, max_rows=retrieval_cache_rows),
            response_cache=self.responses,
            previous_embedder=previous,
        )
        self.model_sha256 = model_sha256
        # Collections of another embedder are embedded again in the background; their old vectors serve meanwhile.
        self.reembedding = ReembedWorker(self.store).start()

    @property
    def search_backend(self) -> str:
        return self.store.search_backend

    @property
    def embedder(self) -> str:
        return self.store.embedder.identity

    def close(self) -> None:
        self.reembedding.stop()
        self.store.close()
        self.responses.close()

    # -- the store --------------------------------------------------------------------------------------
    def ingest(self, collection: str, docs: list[Document], version: str | None) -> IngestResult:
        return self.store.ingest(collection, docs, version or None)

    def delete(self, collection: str, ids: list[str]) -> int:
        return self.store.delete_documents(collection, ids)

    def collections(self) -> list[CollectionInfo]:
        return self.store.list_collections()

    def retrieve(self, query: str, collection: str, top_k: int, mode: str) -> list[Hit]:
        return self.store.retrieve(query, collection, top_k, mode)  # type: ignore[arg-type]

    # -- generation -----------------------------------------------------------------------------------------
    def context(self, question: str, collection: str, top_k: int) -> Context:
        """The collection's best chunks for `question`, numbered as sources in the cite-or-abstain prompt."""
        hits = self.store.retrieve(question, collection, top_k or DEFAULT_GENERATION_TOP_K)
        version = self.store.collection_info(collection).cache_version
        sources = [source_of(i, h) for i, h in enumerate(hits, 1)]
        return Context(
            source_block(sources, MAX_CONTEXT_CHARS_PER_CHUNK), sources, version, relevance(question, sources)
        )

    def cache_key(self, request: dict[str, Any], adapter: str, template: str, collection_version: str) -> str:
        return response_cache_key(
            model=self.model_sha256,
            adapter=adapter,
            template=template,
            collection=collection_version,
            request=request,
        )

    def cached(self, key: str) -> CachedResponse | None:
        try:
            return self.responses.get(key)
        except Exception:  # a cache problem is a miss, never a failed request
            log.exception("response cache read failed")
            return None

    def remember(self, key: str, text: str, metadata: dict[str, Any], collection: str | None) -> None:
        try:
            self.responses.put(key, text, metadata, collection)
        except Exception:
            log.exception("response cache write failed")


def source_of(n: int, h: Hit) -> Source:
    page = h.metadata.get("page", "")
    return Source(n, h.chunk_id, h.doc_id, h.text, h.heading, int(page) if page.isdigit() else 0)
