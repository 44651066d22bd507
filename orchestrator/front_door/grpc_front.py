"""The front door's gRPC face: `edgefleet.v1.Inference` for the whole site, plus health and reflection.

A client changes only the address. Generate is proxied chunk by chunk; Embed and Retrieve go to
one eligible node; Ingest and DeleteDocuments, for operators only, go to every node holding the collection
(knowledge_writes.py); the other node-local methods (GetNodeInfo, ListCollections) answer UNIMPLEMENTED:
they belong to one node, so ask it directly. The node that served is named in the initial metadata
and in the trailing metadata (`x-edgefleet-node`); a caller may pin a node or a group with the same key
or `x-edgefleet-group`; `x-request-id` passes through to the node.
Every error carries its ErrorCode in the trailing metadata (`x-edgefleet-error-code`, as a node's
do), its status from proto/error_table.py. With authentication on, each proxied call is checked by
auth.py for its method's permission (`METHOD_PERMISSION`) and, for Retrieve and a Generate with a
collection, Ingest and DeleteDocuments, the caller's collections, before any node is asked.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from edgefleet.orchestrator.front_door.auth import FrontDoorAuth, grpc_check, grpc_model
from edgefleet.orchestrator.front_door.dispatch import (
    GROUP_KEY,
    NODE_KEY,
    PROMPT_TOKENS_KEY,
    REQUEST_ID_KEY,
    Dispatcher,
    FrontDoorError,
)
from edgefleet.orchestrator.front_door.knowledge_writes import delete_everywhere, ingest_everywhere
from edgefleet.orchestrator.front_door.router import RouteRequest
from edgefleet.plumbing.grpc_errors import abort
from edgefleet.plumbing.grpc_malformed import refuse_malformed
from edgefleet.plumbing.logs import request_id_var
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.orchestrator.front_door.grpc")
MAX_REQUEST_ID = 128


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def affinity_key(template: str, messages: list[tuple[str, str]], collection: str) -> str:
    """Requests with the same key share a prompt prefix: template, else system prompt; and collection."""
    if template:
        head = f"t:{template}"
    elif messages and messages[0][0] == "system":
        head = f"s:{messages[0][1]}"
    else:
        head = ""
    if collection:
        head += f"|c:{collection}"
    return head


def generate_route(request: pb.GenerateRequest, pins: dict[str, str], model: str = "") -> RouteRequest:
    collection = request.retrieval.collection
    return RouteRequest(
        model=model,
        adapter=request.adapter,
        template=request.template,
        collection=collection,
        node=pins.get(NODE_KEY, "").strip(),
        group=pins.get(GROUP_KEY, "").strip(),
        affinity_key=affinity_key(request.template, [(m.role, m.content) for m in request.messages], collection),
    )


class FrontDoorServicer(pb_grpc.InferenceServicer):
    def __init__(self, dispatcher: Dispatcher, default_timeout_s: float, auth: FrontDoorAuth | None = None) -> None:
        self.dispatcher, self.default_timeout_s = dispatcher, default_timeout_s
        self.auth = auth or FrontDoorAuth(None, dispatcher.metrics)

    def _start(self, context: grpc.aio.ServicerContext) -> tuple[dict[str, str], str, float, float]:
        arrived = time.monotonic()
        md = _metadata(context)
        rid = md.get(REQUEST_ID_KEY, "").strip()[:MAX_REQUEST_ID] or uuid.uuid4().hex
        request_id_var.set(rid)
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else self.default_timeout_s
        return md, rid, arrived + timeout, arrived

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        await refuse_malformed(request, context)
        key = await grpc_check(self.auth, context, "Generate", request.adapter, request.retrieval.collection or None)
        md, rid, deadline, arrived = self._start(context)
        route = generate_route(request, md, grpc_model(key))
        gen = self.dispatcher.generation("grpc", request, route, rid, deadline, arrived)
        try:
            try:
                first = await gen.start()
            except FrontDoorError as e:
                await _abort(context, rid, e)
                return
            meta = [(REQUEST_ID_KEY, rid), (NODE_KEY, gen.node)]
            if gen.prompt_tokens:
                meta.append((PROMPT_TOKENS_KEY, gen.prompt_tokens))
            await context.send_initial_metadata(tuple(meta))
            context.set_trailing_metadata(((NODE_KEY, gen.node),))
            yield first
            last = first
            try:
                async for chunk in gen.rest():
                    last = chunk
                    yield chunk
            except FrontDoorError as e:
                await _abort(context, rid, e)
            self.auth.add_tokens(key, last.usage.prompt_tokens + last.usage.completion_tokens)
        finally:
            gen.close()

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return await self._unary(
            request, context, "Embed", None, lambda stub, left, meta: stub.Embed(request, timeout=left, metadata=meta)
        )

    async def Retrieve(self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        """Raw chunks: only of a collection in the caller's allow-list, checked before any node is asked."""
        call = lambda stub, left, meta: stub.Retrieve(request, timeout=left, metadata=meta)  # noqa: E731
        return await self._unary(request, context, "Retrieve", request.collection, call)

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: grpc.aio.ServicerContext) -> pb.NodeInfo:
        return await _node_local(context, "GetNodeInfo")

    async def Ingest(self, request: pb.IngestRequest, context: grpc.aio.ServicerContext) -> pb.IngestResponse:
        """Operators only (KNOWLEDGE_WRITE, role operator or admin; needs authentication on): the same request
        to every online node that holds the collection (or the pinned node, which may not hold it yet)."""
        resp: pb.IngestResponse = await self._knowledge_write(request, context, "Ingest", ingest_everywhere)
        return resp

    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentsResponse:
        """Operators only, as Ingest: the same deletion on every online node that holds the collection."""
        resp: pb.DeleteDocumentsResponse = await self._knowledge_write(
            request, context, "DeleteDocuments", delete_everywhere
        )
        return resp

    async def _knowledge_write(self, request: Any, context: grpc.aio.ServicerContext, method: str, write: Any) -> Any:
        """A knowledge write (well formed, authentication on, the caller's grant checked) through `write`
        (knowledge_writes.py) to the nodes holding the collection, named in the metadata; their answer."""
        await refuse_malformed(request, context)
        if not self.auth.enabled:
            await abort(
                context,
                ErrorCode.PERMISSION_DENIED,
                f"{method} at the front door needs EDGEFLEET_FRONT_DOOR_AUTH=keys and an operator's certificate; "
                f"or call {method} on the node's own address",
            )
        await grpc_check(self.auth, context, method, collection=request.collection)
        md, rid, deadline, _ = self._start(context)
        try:
            nodes, resp = await write(self.dispatcher, request, md, rid, deadline)
        except FrontDoorError as e:
            await _abort(context, rid, e)
        await _name_node(context, rid, ",".join(nodes))
        return resp

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return await _node_local(context, "ListCollections")

    async def _unary(
        self, request: Any, context: grpc.aio.ServicerContext, method: str, collection: str | None, call: Any
    ) -> Any:
        """One request to one eligible node (failover before it answers); the node named in the metadata.
        `collection`: the one the request reads (None: none)."""
        await refuse_malformed(request, context)
        key = await grpc_check(self.auth, context, method, collection=collection)
        md, rid, deadline, arrived = self._start(context)
        route = RouteRequest(
            model=grpc_model(key), collection=collection or "", node=md.get(NODE_KEY, ""), group=md.get(GROUP_KEY, "")
        )
        try:
            node, resp = await self.dispatcher.unary("grpc", route, rid, deadline, arrived, call)
        except FrontDoorError as e:
            await _abort(context, rid, e)
        self.auth.add_tokens(key, int(getattr(resp, "prompt_tokens", 0) or 0))
        await _name_node(context, rid, node)
        return resp


async def _node_local(context: grpc.aio.ServicerContext, method: str) -> NoReturn:
    await abort(
        context,
        ErrorCode.NOT_IMPLEMENTED,
        f"{method} belongs to one node: call it on the node's address, not the front door",
    )


async def _name_node(context: grpc.aio.ServicerContext, rid: str, node: str) -> None:
    await context.send_initial_metadata(((REQUEST_ID_KEY, rid), (NODE_KEY, node)))
    context.set_trailing_metadata(((NODE_KEY, node),))


async def _abort(context: grpc.aio.ServicerContext, rid: str, e: FrontDoorError) -> NoReturn:
    trailing: list[tuple[str, str]] = [(REQUEST_ID_KEY, rid)]
    if e.node:
        trailing.append((NODE_KEY, e.node))
    if e.retry_after_s:
        trailing.append(("retry-after", str(e.retry_after_s)))
    await abort(context, e.code, e.message, trailing)
