"""The response cache at the gRPC edge: deterministic Generate requests (temperature 0) seen before.

The key holds the model's sha256, the adapter's version and sha256, the template's version, the
knowledge collection's content version and the whole request, so a change to any of them misses.
A hit is one final chunk with `cached` set, the stored text, tool calls and source chunk ids. The
whole request is in the key, tools, tool_choice and parallel_tool_calls with it, so an answer made
with one list of tools never answers a request with another.
"""

from __future__ import annotations

from google.protobuf import json_format

from edgefleet.node.api import citations
from edgefleet.node.knowledge.caches import CachedResponse
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import GenerateInput
from edgefleet.proto.v1 import inference_pb2 as pb


def cacheable(service: NodeService, request: pb.GenerateRequest) -> bool:
    """Cheap, on the event loop: only deterministic requests with the cache on go further."""
    return (
        service.knowledge is not None
        and service.settings.response_cache
        and request.HasField("temperature")
        and request.temperature == 0.0
    )


def key_for(service: NodeService, request: pb.GenerateRequest, inp: GenerateInput) -> str | None:
    """The cache key of a `cacheable` request, or None when a name it uses is unknown (generate says so)."""
    k = service.knowledge
    if k is None:
        return None
    adapter = ""
    if inp.adapter:
        entry = service.engine.adapters.get(inp.adapter)
        if entry is None:
            return None  # generate() says NOT_FOUND
        adapter = f"{entry.name}@{entry.version}:{entry.sha256}"
    template = ""
    if inp.template:
        compiled = service.templates.get(inp.template)
        if compiled is None:
            return None
        template = f"{compiled.spec.name}@{compiled.spec.version}"
    collection = k.store.collection_info(inp.collection).cache_version if inp.collection else ""
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return k.cache_key(body, adapter, template, collection)


def chunk(hit: CachedResponse, request_id: str, elapsed_ms: float) -> pb.GenerateChunk:
    m = hit.metadata
    out = pb.GenerateChunk(
        text=hit.text,
        request_id=request_id,
        finish_reason=int(m.get("finish_reason", pb.FINISH_REASON_STOP)),  # type: ignore[arg-type]
        source_chunk_ids=list(m.get("sources", [])),
        tool_calls=[
            pb.ToolCallDelta(index=i, id=str(c["id"]), name=str(c["name"]), arguments=str(c["arguments"]))
            for i, c in enumerate(m.get("tool_calls", []))
        ],
        cached=True,
        usage=pb.Usage(
            prompt_tokens=int(m.get("prompt_tokens", 0)),
            completion_tokens=int(m.get("completion_tokens", 0)),
            total_ms=elapsed_ms,
        ),
    )
    citations.from_metadata(out, m)
    return out


def remember(
    service: NodeService,
    key: str,
    text: str,
    final: pb.GenerateChunk,
    inp: GenerateInput,
    tool_calls: list[dict[str, str]] | None = None,
) -> None:
    if service.knowledge is None:
        return
    metadata = {
        "tool_calls": tool_calls or [],
        "finish_reason": int(final.finish_reason),
        "sources": list(final.source_chunk_ids),
        "prompt_tokens": final.usage.prompt_tokens,
        "completion_tokens": final.usage.completion_tokens,
        **citations.to_metadata(final),
    }
    service.knowledge.remember(key, text, metadata, inp.collection or None)
