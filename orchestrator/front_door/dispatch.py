"""Sending a request to a node: claim a slot, call, fail over before the first token, release.

`Generation` is one proxied Generate: `start()` tries nodes until one sends its first chunk
(a failure before it whose ErrorCode allows failover in proto/error_table.py — connection refused,
a busy, draining or failing node, no first chunk within `first_token_timeout_s` — goes to the next
eligible node, at most `max_attempts` in all and within the caller's deadline; a node that says
DRAINING leaves the rotation until it publishes a new status, others count towards a cooldown);
then the chunks are passed on one by one as they arrive. A
failure after the first chunk ends the stream with an error naming the node: an answer is never
spliced from two nodes. Every retry, failover and cooldown is logged with the request id and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc

from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.orchestrator.front_door.router import Claim, Router, RouteRequest
from edgefleet.orchestrator.front_door.slot_queue import NoSlot, SlotQueue
from edgefleet.orchestrator.front_door.upstream import NodeChannels, NodeRefused
from edgefleet.plumbing.grpc_errors import code_of
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.orchestrator.front_door.dispatch")
REQUEST_ID_KEY = "x-request-id"
NODE_KEY = "x-edgefleet-node"
GROUP_KEY = "x-edgefleet-group"
PROMPT_TOKENS_KEY = "x-edgefleet-prompt-tokens"
R = TypeVar("R")


class FrontDoorError(Exception):
    """A request that ends in an error: its ErrorCode, a message, the node concerned if any, and the
    request field it concerns (`param`, for NO_NODE). Each face maps the code through proto/error_table.py."""

    def __init__(self, code: ErrorCode, message: str, node: str = "", retry_after_s: int = 0, param: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.node, self.retry_after_s, self.param = code, message, node, retry_after_s, param


@dataclass(frozen=True)
class DispatchPolicy:
    first_token_timeout_s: float = 30.0
    max_attempts: int = 3


@dataclass
class NodeFailure:
    """How a node failed a request before its first token."""

    code: ErrorCode
    details: str
    reason: str  # a label for the retries counter


def _failure(e: grpc.aio.AioRpcError) -> NodeFailure:
    """A node's gRPC error: the ErrorCode it sent (or grpc's own status as one), its message."""
    code = code_of(e)
    return NodeFailure(code, e.details() or "", code.value)


def _refused(e: NodeRefused) -> NodeFailure:
    """A node the front door sent nothing: its certificate is not the node's, or it is unreachable."""
    return NodeFailure(e.code, e.message, e.reason)


class Dispatcher:
    def __init__(
        self,
        view: FleetView,
        router: Router,
        slots: SlotQueue,
        channels: NodeChannels,
        metrics: FrontDoorMetrics,
        policy: DispatchPolicy,
    ) -> None:
        self.view, self.router, self.slots = view, router, slots
        self.channels, self.metrics, self.policy = channels, metrics, policy

    def generation(
        self, api: str, request: pb.GenerateRequest, route: RouteRequest, rid: str, deadline: float, arrived: float
    ) -> Generation:
        return Generation(self, api, request, route, rid, deadline, arrived)

    async def unary(
        self,
        api: str,
        route: RouteRequest,
        rid: str,
        deadline: float,
        arrived: float,
        call: Callable[[pb_grpc.InferenceStub, float, list[tuple[str, str]]], Awaitable[R]],
    ) -> tuple[str, R]:
        """A unary call (Embed, Retrieve) with the same routing and failover; (node, response)."""
        tried: set[str] = set()
        while True:
            claim = await self.claim(api, route, tried, rid, deadline, arrived)
            try:
                stub = await self.channels.verified_stub(claim.address, claim.node_id)
                left = deadline - time.monotonic()
                response = await call(stub, left, [(REQUEST_ID_KEY, rid)])
            except (grpc.aio.AioRpcError, NodeRefused) as e:
                self.slots.release(claim)
                failure = _refused(e) if isinstance(e, NodeRefused) else _failure(e)
                self.give_up_or_retry(api, claim, failure, tried, rid, deadline)
                continue
            except BaseException:  # the caller went away (cancelled) or anything else: the slot is free again
                self.slots.release(claim)
                raise
            self.slots.release(claim)
            self.router.succeeded(claim.node_id)
            self.metrics.requests.labels(api, claim.node_id, "ok").inc()
            return claim.node_id, response

    async def claim(
        self, api: str, route: RouteRequest, tried: set[str], rid: str, deadline: float, arrived: float
    ) -> Claim:
        started = time.monotonic()
        try:
            claim, waited = await self.slots.acquire(replace(route, exclude=frozenset(tried)), deadline)
        except NoSlot as e:
            self.metrics.requests.labels(api, "", e.code.value).inc()
            log.info(
                "refused", extra={"request_id": rid, "code": e.code.value, "reason": e.message, "tried": sorted(tried)}
            )
            raise FrontDoorError(e.code, e.message, retry_after_s=e.retry_after_s, param=e.param) from None
        own = (started - arrived if not tried else 0.0) + (time.monotonic() - started - waited)
        self.metrics.added_latency.observe(max(0.0, own))
        self.metrics.in_flight.labels(claim.node_id).set(self.router.in_flight(claim.node_id))
        return claim

    def give_up_or_retry(
        self, api: str, claim: Claim, failure: NodeFailure, tried: set[str], rid: str, deadline: float
    ) -> None:
        """After a failure before the first token: raise FrontDoorError, or return to try the next node."""
        node = claim.node_id
        self.metrics.in_flight.labels(node).set(self.router.in_flight(node))
        if not row(failure.code).failover:  # the request itself is wrong: every node would say so
            self.metrics.requests.labels(api, node, "invalid").inc()
            raise FrontDoorError(failure.code, failure.details, node)
        if time.monotonic() >= deadline:  # the caller's deadline, not the node's fault
            self.metrics.requests.labels(api, node, "deadline").inc()
            log.info("deadline passed before the first token", extra={"request_id": rid, "node": node})
            raise FrontDoorError(ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before the first token", node)
        tried.add(node)
        if failure.code == ErrorCode.DRAINING:
            snap = self.view.snapshot().node(node)
            if snap is not None:
                self.router.draining(snap)
        elif self.router.failed(node, time.time()):
            self.metrics.cooldowns.labels(node).inc()
            log.warning(
                "node cooled down",
                extra={"request_id": rid, "node": node, "cooldown_s": self.router.policy.cooldown_s},
            )
        self.metrics.failovers.labels(node).inc()
        if len(tried) >= self.policy.max_attempts:
            self.metrics.requests.labels(api, node, "failed").inc()
            log.warning(
                "giving up: every attempt failed before the first token",
                extra={"request_id": rid, "node": node, "attempts": len(tried), "code": failure.code.value},
            )
            raise FrontDoorError(
                failure.code, f"node {node} failed before the first token ({failure.details}); tried {len(tried)}", node
            )
        self.metrics.retries.labels(failure.reason).inc()
        log.warning(
            "failing over before the first token",
            extra={"request_id": rid, "node": node, "code": failure.code.value, "reason": failure.details[:300]},
        )


class Generation:
    """One Generate through the front door. `start()`, then iterate; `close()` in every case."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        api: str,
        request: pb.GenerateRequest,
        route: RouteRequest,
        rid: str,
        deadline: float,
        arrived: float,
    ) -> None:
        self.d, self.api, self.request, self.route = dispatcher, api, request, route
        self.rid, self.deadline, self.arrived = rid, deadline, arrived
        self.node = ""
        self.first: pb.GenerateChunk | None = None
        self.prompt_tokens = ""
        self._claim: Claim | None = None
        self._call: Any = None
        self._outcome = "cancelled"

    async def start(self) -> pb.GenerateChunk:
        """The first chunk, from whichever node sent one first. Raises FrontDoorError."""
        d, tried = self.d, set[str]()
        while True:
            claim = await d.claim(self.api, self.route, tried, self.rid, self.deadline, self.arrived)
            self._claim, self.node = claim, claim.node_id
            try:
                stub = await d.channels.verified_stub(claim.address, claim.node_id)
            except NodeRefused as e:
                self._drop_call()
                d.give_up_or_retry(self.api, claim, _refused(e), tried, self.rid, self.deadline)
                continue
            left = self.deadline - time.monotonic()
            self._call = stub.Generate(self.request, timeout=max(0.001, left), metadata=[(REQUEST_ID_KEY, self.rid)])
            wait = min(d.policy.first_token_timeout_s, max(0.001, left))
            try:
                first = await asyncio.wait_for(self._call.read(), wait)
            except TimeoutError:
                failure = NodeFailure(ErrorCode.DEADLINE_EXCEEDED, f"no first token within {wait:.1f}s", "timeout")
            except grpc.aio.AioRpcError as e:
                failure = _failure(e)
            else:
                if first is grpc.aio.EOF:
                    failure = NodeFailure(ErrorCode.INTERNAL, "the node ended the stream without a chunk", "empty")
                else:
                    self.first = first
                    with_meta = await self._call.initial_metadata()
                    self.prompt_tokens = _meta(with_meta, PROMPT_TOKENS_KEY)
                    return first
            self._drop_call()
            d.give_up_or_retry(self.api, claim, failure, tried, self.rid, self.deadline)

    async def rest(self) -> AsyncIterator[pb.GenerateChunk]:
        """The chunks after the first, as they arrive. Raises FrontDoorError naming the node."""
        if self.first is not None and self.first.finish_reason:
            self._finish("ok")
            return
        try:
            while True:
                chunk = await self._call.read()
                if chunk is grpc.aio.EOF:
                    self._finish("ok")
                    return
                yield chunk
                if chunk.finish_reason:
                    self._finish("ok")
                    return
        except grpc.aio.AioRpcError as e:
            self._finish("error")
            code = code_of(e)
            if code != ErrorCode.CANCELLED:
                self.d.router.failed(self.node, time.time())
            log.warning(
                "node failed after the first token",
                extra={"request_id": self.rid, "node": self.node, "code": code.value, "reason": e.details()},
            )
            raise FrontDoorError(
                code, f"node {self.node} failed after the first token: {e.details()}", self.node
            ) from None

    def _finish(self, outcome: str) -> None:
        self._outcome = outcome
        if outcome == "ok":
            self.d.router.succeeded(self.node)

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._claim is not None:
            self.d.slots.release(self._claim)
            self._claim = None

    def close(self) -> None:
        """Release the slot (and cancel the node's call if the client went away); count the outcome."""
        if self._claim is None:
            return
        node = self.node
        self._drop_call()
        self.d.metrics.requests.labels(self.api, node, self._outcome).inc()
        self.d.metrics.in_flight.labels(node).set(self.d.router.in_flight(node))


def _meta(metadata: Any, key: str) -> str:
    for k, v in metadata or ():
        if k == key and isinstance(v, str):
            return v
    return ""
