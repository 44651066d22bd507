"""Engine thread → asyncio: the events of one request, handed over in batches.

The engine emits a token per request per step. Waking the event loop for each costs a
context switch that, on a 2-core device, preempts a llama.cpp worker mid-step. So the engine
thread wakes the loop only when the request's coroutine waits, at most once until it has run,
and the coroutine takes everything that arrived since. With a minimum gap between batches
(the stream interval), text waits out the gap, but the final event ends the wait at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from edgefleet.node.engine.types import Event, TextDelta


class EventChannel:
    def __init__(self, loop: asyncio.AbstractEventLoop, min_gap_s: float = 0.0) -> None:
        self._loop = loop
        self._min_gap = min_gap_s
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None  # set while the coroutine waits
        self._final_only = False  # waiting out the gap: only a final event wakes it
        self._wake_pending = False
        self._last = 0.0

    def put(self, event: Event) -> None:
        """Called on the engine thread."""
        with self._lock:
            self._items.append(event)
            if self._waiter is None or self._wake_pending:
                return
            if self._final_only and isinstance(event, TextDelta):
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, final_only: bool, timeout: float | None) -> None:
        with self._lock:
            if self._items and (not final_only or not isinstance(self._items[-1], TextDelta)):
                return
            waiter = self._waiter = self._loop.create_future()
            self._final_only = final_only
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            with self._lock:
                self._waiter = None
                self._wake_pending = False
                self._final_only = False

    async def next_batch(self) -> list[Event]:
        """Every event that arrived since the last batch, no sooner than the gap allows for text."""
        while True:
            with self._lock:
                has_items = bool(self._items)
            if has_items:
                break
            await self._wait(final_only=False, timeout=None)
        gap = self._last + self._min_gap - self._loop.time()
        if gap > 0:
            await self._wait(final_only=True, timeout=gap)
        with self._lock:
            items = list(self._items)
            self._items.clear()
        self._last = self._loop.time()
        return items
