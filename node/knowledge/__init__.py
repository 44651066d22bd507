"""The node's offline knowledge store (local RAG): documents → chunks → FTS5 + vectors → retrieval.

Pure parts only: no gRPC or MQTT here. See `store.KnowledgeStore` for the entry point.
"""

from edgefleet.node.knowledge.caches import CachedResponse, ResponseCache, RetrievalCache, response_cache_key
from edgefleet.node.knowledge.chunking import Chunk, ChunkingConfig, chunk_text
from edgefleet.node.knowledge.documents import Document
from edgefleet.node.knowledge.embedders import Embedder, LlamaEmbedder, WordLlamaEmbedder, make_embedder
from edgefleet.node.knowledge.errors import (
    BackendUnavailable,
    CorruptDatabase,
    EmbedderMismatch,
    InvalidInput,
    KnowledgeError,
    NotFoundError,
)
from edgefleet.node.knowledge.schema import CollectionInfo, Hit, IngestResult
from edgefleet.node.knowledge.store import KnowledgeStore

__all__ = [
    "BackendUnavailable",
    "CachedResponse",
    "Chunk",
    "ChunkingConfig",
    "CollectionInfo",
    "CorruptDatabase",
    "Document",
    "Embedder",
    "EmbedderMismatch",
    "Hit",
    "IngestResult",
    "InvalidInput",
    "KnowledgeError",
    "KnowledgeStore",
    "LlamaEmbedder",
    "NotFoundError",
    "ResponseCache",
    "RetrievalCache",
    "WordLlamaEmbedder",
    "chunk_text",
    "make_embedder",
    "response_cache_key",
]
