"""OpenAI-compatible HTTP on the front door's router (aiohttp).

POST /v1/chat/completions, /v1/completions (SSE when streaming), /v1/embeddings; GET /v1/models,
/metrics. With authentication on, each route needs its permission (`HTTP_ROUTE_PERMISSION`,
proto/access.py; auth.py): /metrics only for operator and orchestrator certificates (Prometheus
scrapes the plaintext metrics listener instead), a chat naming a `collection` only for callers
allowed to read it. Errors are OpenAI's error object: `error.code` is the ErrorCode, `error.type` and the
HTTP status come from proto/error_table.py (400 for a bad field, named in `error.param`; 404 for
what no node serves, the field named; 429 with Retry-After; 503; 504). The node that answered is
in the `x-edgefleet-node` header and in the body's `edgefleet.node`. A knowledge answer (a `collection`)
carries its grounding there too, in the body and in the final stream event: `edgefleet.citations` (n,
chunk_id, document_id, page or null, quote), `edgefleet.abstained` and `edgefleet.unsupported`.
Embeddings come as floats or, with `encoding_format: base64` (the official client's default), as
little-endian float32 bytes.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edgefleet.orchestrator.api_keys import ApiKey, Verdict
from edgefleet.orchestrator.front_door import openai_schema as schema
from edgefleet.orchestrator.front_door.auth import FrontDoorAuth, http_peer
from edgefleet.orchestrator.front_door.dispatch import GROUP_KEY, NODE_KEY, REQUEST_ID_KEY, Dispatcher, FrontDoorError
from edgefleet.orchestrator.front_door.grpc_front import affinity_key
from edgefleet.orchestrator.front_door.metrics import CONTENT_TYPE, FrontDoorMetrics
from edgefleet.orchestrator.front_door.router import RouteRequest
from edgefleet.orchestrator.front_door.sse import ChunkWriter, completion_body, usage_of
from edgefleet.plumbing.logs import request_id_var
from edgefleet.proto.access import HTTP_ROUTE_PERMISSION, Permission
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import code_for_http_status, row
from edgefleet.proto.v1 import inference_pb2 as pb

log = logging.getLogger("edgefleet.orchestrator.front_door.http")
MAX_BODY_BYTES = 8 * 1024 * 1024


def error_body(code: ErrorCode, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for `code`: its type from the table, the code's value as `code`."""
    return {"error": {"message": message, "type": row(code).openai_type, "param": param, "code": code.value}}


def error_response(code: ErrorCode, message: str, param: str | None = None, headers: dict[str, str] | None = None,
                   status: int | None = None) -> web.Response:  # fmt: skip
    """The error as a response: the table's HTTP status for `code` (`status` only for the framework's own)."""
    r = row(code)
    headers = dict(headers or {})
    if r.http == 429:
        headers.setdefault("Retry-After", "1")
    if code == ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(error_body(code, message, param), status=status or r.http, headers=headers)


def refusal(v: Verdict) -> web.Response:
    """An API-key refusal (UNAUTHENTICATED, PERMISSION_DENIED, RATE_LIMITED) as OpenAI's error object."""
    assert v.refused is not None
    headers = {"Retry-After": str(v.retry_after_s)} if v.retry_after_s else None
    return error_response(v.refused, v.message, headers=headers)


def front_door_error(e: FrontDoorError, rid: str) -> web.Response:
    headers = {REQUEST_ID_KEY: rid}
    if e.node:
        headers[NODE_KEY] = e.node
    if e.retry_after_s:
        headers["Retry-After"] = str(e.retry_after_s)
    return error_response(e.code, e.message, e.param or None, headers)


CALLER = web.RequestKey("caller", Verdict)  # who calls and the limits that apply (absent: auth off)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is OpenAI's error object, and the server keeps serving."""
    try:
        return await handler(request)
    except schema.BodyError as e:
        return error_response(ErrorCode.INVALID_REQUEST, e.message, e.param)
    except web.HTTPException as e:  # aiohttp's own (no route, method, body too large): its status kept
        if e.status < 400:
            raise
        return error_response(code_for_http_status(e.status), e.reason or "error", status=e.status)
    except Exception:
        log.exception("unexpected error in an HTTP handler")
        return error_response(ErrorCode.INTERNAL, "internal error in the front door")


class OpenAIApi:
    def __init__(self, dispatcher: Dispatcher, metrics: FrontDoorMetrics, timeout_s: float,
                 auth: FrontDoorAuth | None = None) -> None:  # fmt: skip
        self.d, self.metrics, self.timeout_s = dispatcher, metrics, timeout_s
        self.auth = auth or FrontDoorAuth(None, metrics)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[openai_errors, self._api_key], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    @web.middleware
    async def _api_key(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With authentication on, every route needs its permission: a client certificate granted
        it, or `Authorization: Bearer <key>` (/metrics: a certificate only)."""
        permission = HTTP_ROUTE_PERMISSION.get(request.path)
        if permission is None and request.path.startswith("/v1/"):
            permission = Permission.GENERATE  # an unknown /v1/ route: a client's 404, nobody else's
        if self.auth.enabled and permission is not None:
            v = self.auth.identify(request.headers.get("Authorization"), http_peer(request), permission)
            if not v.allowed:
                return refusal(v)
            request[CALLER] = v
        return await handler(request)

    async def metrics_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, _: web.Request) -> web.Response:
        served: dict[str, list[str]] = {}
        for n in self.d.view.snapshot().online():
            if n.model:
                served.setdefault(n.model, []).append(n.node_id)
                for a in sorted(set(n.adapters) | n.served_adapters):
                    served.setdefault(f"{n.model}:{a}", []).append(n.node_id)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "edgefleet", "nodes": sorted(nodes)}
            for m, nodes in sorted(served.items())
        ]
        return web.json_response({"object": "list", "data": data})

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as e:
            raise schema.BodyError(None, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise schema.BodyError(None, "the request body is nested too deeply") from None

    def _start(self, request: web.Request) -> tuple[str, float, float]:
        arrived = time.monotonic()
        rid = request.headers.get(REQUEST_ID_KEY, "").strip()[:128] or uuid.uuid4().hex
        request_id_var.set(rid)
        return rid, arrived + self.timeout_s, arrived

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, schema.parse_chat(await self._body(request)))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, schema.parse_completion(await self._body(request)))

    async def _complete(self, request: web.Request, call: schema.CompletionCall) -> web.StreamResponse:
        rid, deadline, arrived = self._start(request)
        req = call.request
        caller = request.get(CALLER)
        key = caller.key if caller is not None else None
        allowed = self.auth.authorize(caller, call.model, call.adapter, req.retrieval.collection or None)
        if not allowed.allowed:
            return refusal(allowed)
        route = RouteRequest(
            model=call.model,
            adapter=call.adapter,
            template=req.template,
            collection=req.retrieval.collection,
            node=request.headers.get(NODE_KEY, "").strip(),
            group=request.headers.get(GROUP_KEY, "").strip(),
            affinity_key=affinity_key(req.template, call.messages, req.retrieval.collection),
        )
        gen = self.d.generation("openai", req, route, rid, deadline, arrived)
        try:
            try:
                first = await gen.start()
            except FrontDoorError as e:
                return front_door_error(e, rid)
            headers = {REQUEST_ID_KEY: rid, NODE_KEY: gen.node}
            if call.stream:
                return await self._stream(request, call, gen.node, rid, first, gen.rest(), headers, key)
            chunks = [first]
            try:
                chunks.extend([c async for c in gen.rest()])
            except FrontDoorError as e:
                return front_door_error(e, rid)
            self.auth.add_tokens(key, chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens)
            return web.json_response(completion_body(call, rid, gen.node, chunks), headers=headers)
        finally:
            gen.close()

    async def _stream(self, request: web.Request, call: schema.CompletionCall, node: str, rid: str,
                      first: pb.GenerateChunk, rest: Any, headers: dict[str, str],
                      key: ApiKey | None = None) -> web.StreamResponse:  # fmt: skip
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        out = ChunkWriter(resp, call, rid, node)
        try:
            await out.chunk(first)
            async for chunk in rest:
                await out.chunk(chunk)
            if call.include_usage and out.final is not None:
                await out.event({**out.envelope(), "choices": [], "usage": usage_of(out.final)})
            await resp.write(b"data: [DONE]\n\n")
            if out.final is not None:
                self.auth.add_tokens(key, out.final.usage.prompt_tokens + out.final.usage.completion_tokens)
        except FrontDoorError as e:  # after the first token: an error event naming the node, no [DONE]
            await out.event(error_body(e.code, e.message))
        except ConnectionResetError:  # the client went away: `close()` cancels the node's call
            log.info("client went away mid-stream", extra={"request_id": rid, "node": node})
            return resp
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        call = schema.parse_embeddings(await self._body(request))
        rid, deadline, arrived = self._start(request)
        caller = request.get(CALLER)
        key = caller.key if caller is not None else None
        allowed = self.auth.authorize(caller, call.model)
        if not allowed.allowed:
            return refusal(allowed)
        route = RouteRequest(
            model=call.model, node=request.headers.get(NODE_KEY, ""), group=request.headers.get(GROUP_KEY, "")
        )
        emb = pb.EmbedRequest(texts=call.texts)
        try:
            node, resp = await self.d.unary(
                "openai",
                route,
                rid,
                deadline,
                arrived,
                lambda stub, left, meta: stub.Embed(emb, timeout=left, metadata=meta),
            )
        except FrontDoorError as e:
            return front_door_error(e, rid)
        self.auth.add_tokens(key, resp.prompt_tokens)
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(list(e.values), call.base64)}
                for i, e in enumerate(resp.embeddings)
            ],
            "model": call.model,
            "usage": {"prompt_tokens": resp.prompt_tokens, "total_tokens": resp.prompt_tokens},
            "edgefleet": {"node": node, "request_id": rid},
        }
        return web.json_response(body, headers={REQUEST_ID_KEY: rid, NODE_KEY: node})


def _vector(values: list[float], as_base64: bool) -> list[float] | str:
    """An embedding as OpenAI sends it: floats, or base64 of little-endian float32 bytes."""
    if not as_base64:
        return values
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
