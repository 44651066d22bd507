"""The slot queue: a claimed slot now, a bounded wait for one, or a refusal at once.

When every eligible node is full a request waits in a bounded buffer and goes out on the next
free slot (a release wakes the waiters; they also look again every `_POLL_S`, for telemetry and
nodes that came online). A full buffer, or a wait that runs out, is refused at once with a hint
of when to come back. Runs on the front door's event loop.

It also shows, per online node, the slots the node claims and the slots the router grants it
(capped by its firmware profile and EDGEFLEET_ROUTE_MAX_SLOTS_PER_NODE): the gauge
`edgefleet_front_door_node_slots{node, figure="claimed"|"granted"}`, read at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.orchestrator.fleet_view import FleetSnapshot
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.orchestrator.front_door.router import Claim, Router, RouteRequest
from edgefleet.proto.error_codes import ErrorCode

log = logging.getLogger("edgefleet.orchestrator.front_door.slot_queue")
_POLL_S = 0.25


class NoSlot(Exception):
    """No slot for this request: `code` says why (NO_NODE naming `param`, UNAVAILABLE, ALL_BUSY)."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: int = 1, param: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s, self.param = code, message, retry_after_s, param


class _SlotsCollector(Collector):
    """Each online node's claimed and granted slots, from the fleet snapshot and the router at scrape time."""

    def __init__(self, router: Router, snapshot: Callable[[], FleetSnapshot]) -> None:
        self._router, self._snapshot = router, snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "edgefleet_front_door_node_slots",
            "Slots of each online node: what it claims, and what the front door grants it (capped by its "
            "firmware profile and EDGEFLEET_ROUTE_MAX_SLOTS_PER_NODE)",
            labels=["node", "figure"],
        )
        for n in self._snapshot().online():
            if n.load is not None:
                g.add_metric([n.node_id, "claimed"], n.load.slots_available)
            g.add_metric([n.node_id, "granted"], self._router.capacity(n))
        yield g


class SlotQueue:
    def __init__(
        self,
        router: Router,
        snapshot: Callable[[], FleetSnapshot],
        metrics: FrontDoorMetrics,
        buffer_size: int,
        max_wait_s: float,
    ) -> None:
        self.router, self.snapshot, self.metrics = router, snapshot, metrics
        self.buffer_size, self.max_wait_s = buffer_size, max_wait_s
        self.waiting = 0
        self._freed: asyncio.Event | None = None
        metrics.registry.register(_SlotsCollector(router, snapshot))

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.max_wait_s))

    def _try(self, req: RouteRequest) -> Claim | None:
        d = self.router.claim(self.snapshot(), req, time.time())
        if d.claim is not None:
            return d.claim
        if d.refusal != ErrorCode.ALL_BUSY:
            raise NoSlot(d.refusal or ErrorCode.UNAVAILABLE, d.message, param=d.param)
        return None

    async def acquire(self, req: RouteRequest, deadline: float) -> tuple[Claim, float]:
        """A claimed slot and the seconds waited for it; `deadline` is the caller's (time.monotonic()).

        Raises NoSlot."""
        claim = self._try(req)
        if claim is not None:
            return claim, 0.0
        if self.waiting >= self.buffer_size:
            raise NoSlot(
                ErrorCode.ALL_BUSY,
                f"every node is busy and {self.waiting} requests already wait; try again",
                self.retry_after_s,
            )
        start = time.monotonic()
        until = min(start + self.max_wait_s, deadline)
        self.waiting += 1
        self.metrics.buffer_depth.set(self.waiting)
        try:
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    raise NoSlot(
                        ErrorCode.ALL_BUSY,
                        f"no free slot for {req.describe()} within {time.monotonic() - start:.1f}s; try again",
                        self.retry_after_s,
                    )
                if self._freed is None:
                    self._freed = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), min(left, _POLL_S))
                claim = self._try(req)
                if claim is not None:
                    log.info("left the buffer", extra={"node": claim.node_id, "waited_ms": _ms(start)})
                    return claim, time.monotonic() - start
        finally:
            self.waiting -= 1
            self.metrics.buffer_depth.set(self.waiting)
            self.metrics.buffer_wait.observe(time.monotonic() - start)

    def release(self, claim: Claim) -> None:
        self.router.release(claim)
        self.wake()

    def wake(self) -> None:
        """Waiters look again (a slot was freed)."""
        if self._freed is not None:
            self._freed.set()
            self._freed = None


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
