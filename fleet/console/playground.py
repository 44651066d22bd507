"""The playground: one question through the front door (or straight to a node), streamed back.

The browser POSTs the request as JSON (with the CSRF header) and reads the answer as it comes:
newline-delimited JSON events `meta` (who answers), `text` (each delta), then `done` (time to
first token, tokens/s, finish reason, sources) or `error` (its ErrorCode and message). The server calls
`edgefleet.v1.Inference/Generate` with grpc.aio and forwards each chunk as it arrives.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import grpc
from aiohttp import web

from edgefleet.fleet.console import server as s
from edgefleet.fleet.grpc_channel import node_channel_aio
from edgefleet.plumbing.grpc_errors import code_of
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.console.playground")

NODE_HEADER = "x-edgefleet-node"
MAX_QUESTION_CHARS = 16 * 1024


class BadRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def generate_request(body: dict[str, Any]) -> pb.GenerateRequest:
    question = str(body.get("question", "")).strip()
    if not question:
        raise BadRequest("question", "ask something")
    if len(question) > MAX_QUESTION_CHARS:
        raise BadRequest("question", f"the question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    req = pb.GenerateRequest(adapter=str(body.get("adapter", "")).strip())
    schema = str(body.get("json_schema", "")).strip()
    if schema:
        try:
            json.loads(schema)
        except ValueError as e:
            raise BadRequest("json_schema", f"the JSON schema is not valid JSON: {e}") from e
        req.json_schema = schema
    template = str(body.get("template", "")).strip()
    if template:
        req.template = template
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            raise BadRequest("variables", "variables must be NAME=VALUE lines")
        for k, v in variables.items():
            req.variables[str(k)] = str(v)
        req.variables.setdefault("question", question)
    else:
        req.messages.append(pb.ChatMessage(role="user", content=question))
    collection = str(body.get("collection", "")).strip()
    if collection:
        req.retrieval.collection = collection
    max_tokens = body.get("max_tokens")
    if max_tokens not in (None, ""):
        try:
            req.max_tokens = int(max_tokens)
        except (TypeError, ValueError) as e:
            raise BadRequest("max_tokens", "max tokens must be a whole number") from e
    return req


async def generate(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="send the request as JSON") from None
    fleet = request.app[s.FLEET_KEY]
    front_door = request.app[s.SETTINGS_KEY].front_door_address
    address = str(body.get("address", "")).strip() or front_door
    known = {r["address"]: r["node_id"] for r in fleet.fleet_rows() if r["address"]}
    if address != front_door and address not in known:
        return web.json_response(
            {"field": "address", "error": f"{address} is not the front door nor a node's"}, status=422
        )
    try:
        req = generate_request(body)
    except BadRequest as e:
        return web.json_response({"field": e.field, "error": e.message}, status=422)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    await resp.prepare(request)

    async def send(event: dict[str, Any]) -> None:
        await resp.write((json.dumps(event) + "\n").encode())

    rid = uuid.uuid4().hex
    started = time.monotonic()
    first: float | None = None
    chars = 0
    settings = request.app[s.SETTINGS_KEY]
    key = settings.console_api_key if address == front_door else None
    async with node_channel_aio(settings, address, known.get(address), key) as channel:
        call = pb_grpc.InferenceStub(channel).Generate(req, timeout=120, metadata=(("x-request-id", rid),))
        try:
            header = dict(await call.initial_metadata() or ())
            node = str(header.get(NODE_HEADER, "")) or known.get(address, "")
            via = "front door" if address == front_door else "direct to the node"
            await send(
                {
                    "type": "meta",
                    "node": node,
                    "via": via,
                    "address": address,
                    "request_id": rid,
                    "node_source": "x-edgefleet-node" if header.get(NODE_HEADER) else "fleet view (address)",
                }
            )
            last = None
            async for chunk in call:
                if chunk.text and first is None:
                    first = time.monotonic()
                chars += len(chunk.text)
                if chunk.text:
                    await send({"type": "text", "text": chunk.text})
                last = chunk
            u = last.usage if last is not None else pb.Usage()
            await send(
                {
                    "type": "done",
                    "ttft_ms": round(u.time_to_first_token_ms or ((first or time.monotonic()) - started) * 1000, 1),
                    "ttft_seen_ms": round(((first or time.monotonic()) - started) * 1000, 1),
                    "tokens_per_second": round(u.tokens_per_second, 1),
                    "completion_tokens": u.completion_tokens,
                    "finish_reason": pb.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
                    if last is not None
                    else "",
                    "sources": list(last.source_chunk_ids) if last is not None else [],
                }
            )
        except grpc.aio.AioRpcError as e:  # the ErrorCode the node or front door sent (grpc's own: from its status)
            await send({"type": "error", "code": code_of(e).value, "error": e.details() or str(e.code())})
    log.info("playground answer", extra={"address": address, "request_id": rid, "chars": chars})
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_post("/playground/generate", generate)
