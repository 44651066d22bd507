"""Engine thread → asyncio: events of one request, handed over in batches.

The engine emits a token per request per step. Waking the event loop once per event costs a
context switch that, on a 2-core device, preempts a llama.cpp worker mid-step; so the engine
thread only schedules a wake-up when none is pending, and the coroutine takes everything that
arrived since, which it sends as one chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from edgefleet.node.engine.types import Event


class EventChannel:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: Event) -> None:
        """Called on the engine thread."""
        with self._lock:
            self._items.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take_nowait(self) -> list[Event]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    async def get_all(self) -> list[Event]:
        """Every event that arrived since the last call; waits when there is none."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
