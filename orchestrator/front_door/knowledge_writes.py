"""Knowledge writes through the front door (Ingest, DeleteDocuments): one request to every node that holds
the collection.

An operator (role operator or admin, checked by auth.py before this runs) sends documents (or the ids
to delete) once; the front door sends the same request to each online node that holds the collection (reported
by the node or found by the front door's probe), or to the node pinned with `x-edgefleet-node`
(which may not hold it yet: the first ingest of a collection), narrowed by `x-edgefleet-group`.
The nodes are called at once; each reads the documents itself (PDF bytes included). The answer is
the figures of the first node in name order when every node took it; otherwise an error naming the
nodes that took it and each that did not, with the first refusal's ErrorCode (a bad document is
refused alike by all, so INVALID_ARGUMENT and nothing written anywhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from edgefleet.orchestrator.fleet_view import NodeSnapshot
from edgefleet.orchestrator.front_door.dispatch import GROUP_KEY, NODE_KEY, REQUEST_ID_KEY, Dispatcher, FrontDoorError
from edgefleet.orchestrator.front_door.upstream import NodeRefused
from edgefleet.plumbing.grpc_errors import code_of
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.v1 import inference_pb2 as pb

log = logging.getLogger("edgefleet.orchestrator.front_door.knowledge_writes")

R = TypeVar("R")
NodeCall = Callable[[Any, float, list[tuple[str, str]]], Awaitable[R]]
"""(node stub, seconds left, metadata) -> the node's answer."""


def ingest_targets(nodes: list[NodeSnapshot], collection: str, node: str, group: str) -> list[NodeSnapshot]:
    """The online nodes (with an address) an Ingest of `collection` goes to, in name order."""
    out = [
        n
        for n in nodes
        if n.state == "online" and n.address and (n.node_id == node if node else n.has_collection(collection))
    ]
    if group:
        out = [n for n in out if group in n.groups]
    return sorted(out, key=lambda n: n.node_id)


async def ingest_everywhere(
    dispatcher: Dispatcher, request: pb.IngestRequest, md: dict[str, str], rid: str, deadline: float
) -> tuple[list[str], pb.IngestResponse]:
    """(the nodes that took it, the first one's answer); FrontDoorError when none holds it or any refused."""
    call: NodeCall[pb.IngestResponse] = lambda stub, left, meta: stub.Ingest(request, timeout=left, metadata=meta)  # noqa: E731
    extra = {"documents": len(request.documents)}
    return await write_everywhere(
        dispatcher, "Ingest", request.collection, call, pb.IngestResponse, md, rid, deadline, extra
    )


async def delete_everywhere(
    dispatcher: Dispatcher, request: pb.DeleteDocumentsRequest, md: dict[str, str], rid: str, deadline: float
) -> tuple[list[str], pb.DeleteDocumentsResponse]:
    """DeleteDocuments on every node holding the collection: as `ingest_everywhere`."""
    call: NodeCall[pb.DeleteDocumentsResponse] = lambda stub, left, meta: stub.DeleteDocuments(  # noqa: E731
        request, timeout=left, metadata=meta
    )
    extra = {"documents": len(request.ids)}
    answer = pb.DeleteDocumentsResponse
    return await write_everywhere(
        dispatcher, "DeleteDocuments", request.collection, call, answer, md, rid, deadline, extra
    )


async def write_everywhere(
    dispatcher: Dispatcher,
    method: str,
    collection: str,
    call: NodeCall[R],
    answer: type[R],
    md: dict[str, str],
    rid: str,
    deadline: float,
    extra: dict[str, Any],
) -> tuple[list[str], R]:
    """(the nodes that took it, the first one's answer of type `answer`); FrontDoorError when no online node
    holds `collection` (or the pinned node is not online) or any node refused."""
    pin, group = md.get(NODE_KEY, "").strip(), md.get(GROUP_KEY, "").strip()
    targets = ingest_targets(dispatcher.view.snapshot().online(), collection, pin, group)
    if not targets:
        where = f"node {pin!r} is not online" if pin else f"no online node holds collection {brief(collection)}"
        hint = ": name a node with x-edgefleet-node to create it there" if method == "Ingest" else ""
        raise FrontDoorError(
            ErrorCode.NO_NODE, f"{where}{f' in group {group!r}' if group else ''}{hint}", param="collection"
        )

    async def one(n: NodeSnapshot) -> R:
        stub = await dispatcher.channels.verified_stub(n.address, n.node_id)
        left = max(0.001, deadline - time.monotonic())
        return await call(stub, left, [(REQUEST_ID_KEY, rid)])

    results = await asyncio.gather(*(one(n) for n in targets), return_exceptions=True)
    took = [n.node_id for n, r in zip(targets, results, strict=True) if isinstance(r, answer)]
    failed: list[tuple[str, ErrorCode, str]] = []
    for n, r in zip(targets, results, strict=True):
        if isinstance(r, NodeRefused):
            failed.append((n.node_id, r.code, r.message))
        elif isinstance(r, grpc.aio.AioRpcError):
            failed.append((n.node_id, code_of(r), r.details() or ""))
        elif isinstance(r, BaseException):
            raise r
    log.info(
        f"{method} through the front door",
        extra={"collection": collection, **extra, "took": took, "failed": [f[0] for f in failed]},
    )
    if failed:
        node, code, _ = failed[0]
        refusals = "; ".join(f"{n}: {msg}" for n, _, msg in failed)
        took_text = f"taken by {', '.join(took)}; " if took else ""
        raise FrontDoorError(code, f"{took_text}refused by {refusals}", node=node)
    first = next(r for r in results if isinstance(r, answer))
    return took, first
