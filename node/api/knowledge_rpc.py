"""Knowledge RPCs (Ingest, DeleteDocuments, ListCollections, Retrieve): protobuf ↔ KnowledgeService.

Store work (reading a PDF's text layer, chunking, embedding, SQLite) runs in a worker thread so the
event loop keeps streaming other requests' tokens. A document's `data` is a file's bytes (PDF, HTML,
UTF-8 text), read by plumbing/document_text.py as the CLI reads files; one document it cannot read
refuses the whole batch (INVALID_ARGUMENT naming it), before anything is written.
"""

from __future__ import annotations

import asyncio

from edgefleet.node.errors import InvalidRequest, Unavailable
from edgefleet.node.knowledge.documents import Document
from edgefleet.node.knowledge.service import KnowledgeService
from edgefleet.proto.input_limits import brief
from edgefleet.proto.v1 import inference_pb2 as pb

DEFAULT_RETRIEVE_TOP_K = 5


def need(knowledge: KnowledgeService | None) -> KnowledgeService:
    if knowledge is None:
        raise Unavailable("this node has no knowledge store (EDGEFLEET_KNOWLEDGE is off)")
    return knowledge


async def ingest(k: KnowledgeService, req: pb.IngestRequest) -> pb.IngestResponse:
    for i, d in enumerate(req.documents):
        if d.text and d.data:
            raise InvalidRequest(f"documents[{i}] ({brief(d.id)}) has both text and data; send one of them")
    docs = [
        Document(
            id=d.id,
            text=d.data if d.data and not d.text else d.text,
            metadata=dict(d.metadata),
            format=d.format or "auto",
        )
        for d in req.documents
    ]
    result = await asyncio.to_thread(k.ingest, req.collection, docs, req.version)
    info = await asyncio.to_thread(k.store.collection_info, req.collection)
    return pb.IngestResponse(
        documents=result.documents, chunks=result.chunks, unchanged=result.unchanged, collection_version=info.version
    )


async def delete(k: KnowledgeService, req: pb.DeleteDocumentsRequest) -> pb.DeleteDocumentsResponse:
    return pb.DeleteDocumentsResponse(deleted=await asyncio.to_thread(k.delete, req.collection, list(req.ids)))


async def collections(k: KnowledgeService) -> pb.ListCollectionsResponse:
    infos = await asyncio.to_thread(k.collections)
    return pb.ListCollectionsResponse(
        collections=[
            pb.CollectionInfo(
                name=c.name, version=c.version, documents=c.documents, chunks=c.chunks, embedder=c.embedder
            )
            for c in infos
        ],
        search_backend=k.search_backend,
        embedder=k.embedder,
    )


async def retrieve(k: KnowledgeService, req: pb.RetrieveRequest) -> pb.RetrieveResponse:
    hits = await asyncio.to_thread(
        k.retrieve, req.query, req.collection, req.top_k or DEFAULT_RETRIEVE_TOP_K, req.mode or "hybrid"
    )
    return pb.RetrieveResponse(
        chunks=[
            pb.RetrievedChunk(
                chunk_id=h.chunk_id, doc_id=h.doc_id, score=h.score, text=h.text, heading=h.heading, metadata=h.metadata
            )
            for h in hits
        ]
    )
