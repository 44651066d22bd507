"""A knowledge answer's grounding on the wire: the final GenerateChunk's citations, abstained and unsupported."""

from __future__ import annotations

from typing import Any

from edgefleet.node.knowledge.grounded_sink import Grounding
from edgefleet.proto.v1 import inference_pb2 as pb


def fill(final: pb.GenerateChunk, grounding: Grounding | None) -> None:
    """Set the final chunk's grounding fields from the verdict (nothing without one: no retrieval, JSON, tools)."""
    v = grounding.verdict if grounding is not None else None
    if v is None:
        return
    final.citations.extend(
        pb.Citation(n=c.n, chunk_id=c.chunk_id, document_id=c.doc_id, page=c.page, quote=c.quote) for c in v.citations
    )
    final.abstained = v.abstained
    final.unsupported = not v.supported


def to_metadata(final: pb.GenerateChunk) -> dict[str, Any]:
    """The grounding fields as the response cache keeps them."""
    return {
        "citations": [
            {"n": c.n, "chunk_id": c.chunk_id, "document_id": c.document_id, "page": c.page, "quote": c.quote}
            for c in final.citations
        ],
        "abstained": final.abstained,
        "unsupported": final.unsupported,
    }


def from_metadata(chunk: pb.GenerateChunk, m: dict[str, Any]) -> None:
    for c in m.get("citations", []):
        chunk.citations.append(
            pb.Citation(
                n=int(c["n"]),
                chunk_id=str(c["chunk_id"]),
                document_id=str(c["document_id"]),
                page=int(c["page"]),
                quote=str(c["quote"]),
            )
        )
    chunk.abstained = bool(m.get("abstained", False))
    chunk.unsupported = bool(m.get("unsupported", False))
