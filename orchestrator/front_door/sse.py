"""Generate chunks as OpenAI response bodies: one whole completion, or server-sent events.

Tool calls (chat only) come as OpenAI sends them: `message.tool_calls` with `content` null when the
answer is only calls; streamed, `delta.tool_calls` entries whose first for a call carries its
index, id, type and name, and later ones the same index and more `function.arguments`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from edgefleet.orchestrator.front_door.openai_schema import CompletionCall
from edgefleet.orchestrator.front_door.openai_tools import DeltaMapper, gather
from edgefleet.proto.v1 import inference_pb2 as pb

# CANCELLED (the node shut down or the deadline passed mid-answer): the answer is cut, as by a limit.
FINISH = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CANCELLED: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def usage_of(final: pb.GenerateChunk) -> dict[str, Any]:
    u = final.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    }


def extras(rid: str, node: str, final: pb.GenerateChunk | None) -> dict[str, Any]:
    out: dict[str, Any] = {"node": node, "request_id": rid}
    if final is not None:
        out.update(
            source_chunk_ids=list(final.source_chunk_ids),
            cached=final.cached,
            time_to_first_token_ms=round(final.usage.time_to_first_token_ms, 1),
            cached_prompt_tokens=final.usage.cached_prompt_tokens,
            citations=[_citation(c) for c in final.citations],
            abstained=final.abstained,
            unsupported=final.unsupported,
        )
    return out


def _citation(c: pb.Citation) -> dict[str, Any]:
    return {"n": c.n, "chunk_id": c.chunk_id, "document_id": c.document_id, "page": c.page or None, "quote": c.quote}


def _envelope(call: CompletionCall, rid: str, stream: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if stream else "chat.completion") if call.chat else "text_completion"
    model = f"{call.model}:{call.adapter}" if call.adapter else call.model
    return {
        "id": f"{'chatcmpl' if call.chat else 'cmpl'}-{rid}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def completion_body(call: CompletionCall, rid: str, node: str, chunks: list[pb.GenerateChunk]) -> dict[str, Any]:
    final = chunks[-1]
    text = "".join(c.text for c in chunks)
    finish = FINISH.get(final.finish_reason, "stop")
    if call.chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls = gather(chunks)
        if calls:
            message.update(content=text or None, tool_calls=calls)
        choice: dict[str, Any] = {"index": 0, "message": message}
    else:
        choice = {"index": 0, "text": text}
    choice.update(finish_reason=finish, logprobs=None)
    return {
        **_envelope(call, rid, False),
        "choices": [choice],
        "usage": usage_of(final),
        "edgefleet": extras(rid, node, final),
    }


class ChunkWriter:
    """One SSE `data:` event per Generate chunk, as it arrives."""

    def __init__(self, resp: web.StreamResponse, call: CompletionCall, rid: str, node: str) -> None:
        self.resp, self.call, self.rid, self.node = resp, call, rid, node
        self.final: pb.GenerateChunk | None = None
        self._head = _envelope(call, rid, True)
        self._started = False
        self._calls = DeltaMapper()

    def envelope(self) -> dict[str, Any]:
        return dict(self._head)

    async def event(self, body: dict[str, Any]) -> None:
        await self.resp.write(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")

    async def chunk(self, c: pb.GenerateChunk) -> None:
        finish = FINISH.get(c.finish_reason) if c.finish_reason else None
        if self.call.chat:
            delta: dict[str, Any] = {"role": "assistant"} if not self._started else {}
            calls = self._calls.entries(c.tool_calls)
            if c.text or not (calls or self._calls.opened):
                delta["content"] = c.text
            elif not self._started:  # an answer that opens with a call: content null, as OpenAI
                delta["content"] = None
            if calls:
                delta["tool_calls"] = calls
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": c.text, "finish_reason": finish, "logprobs": None}
        self._started = True
        body = {**self._head, "choices": [choice]}
        if finish is not None:
            self.final = c
            body["edgefleet"] = extras(self.rid, self.node, c)
        await self.event(body)
