"""Engine thread → asyncio: the events of one request, handed over in batches.

The engine emits a token per request per step. Waking the event loop for each costs a
context switch that, on a 2-core device, preempts a llama.cpp worker mid-step. So the engine
thread wakes the loop only when the request's coroutine waits, at most once until it has run,
and the coroutine takes everything that arrived since. With a minimum gap between batches
(the stream interval), the coroutine sleeps out the gap first: text that arrives meanwhile does
not wake the loop at all (no cross-thread wake-up), only a final event ends the sleep at once.
The first batch is never held. The wake-up itself goes through the loop's LoopWaker
(node/api/loop_waker.py), which does not hand the GIL to the loop in the middle of a step.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from edgefleet.node.api.loop_waker import resolve, waker_for
from edgefleet.node.engine.types import Event, TextDelta


class EventChannel:
    def __init__(self, loop: asyncio.AbstractEventLoop, min_gap_s: float = 0.0) -> None:
        self._loop = loop
        self._waker = waker_for(loop)
        self._min_gap = min_gap_s
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None  # set while the coroutine waits
        self._final_only = False  # sleeping out the gap: only a final event wakes it
        self._wake_pending = False
        self._last: float | None = None  # loop time of the last batch taken; None: none yet

    def put(self, event: Event) -> None:
        """Called on the engine thread."""
        with self._lock:
            self._items.append(event)
            waiter = self._waiter
            if waiter is None or self._wake_pending:
                return
            if self._final_only and isinstance(event, TextDelta):
                return
            self._wake_pending = True
        self._waker.wake(waiter)

    def _ready(self, final_only: bool) -> bool:
        """Under the lock: whether what is queued ends a wait of this kind."""
        return bool(self._items) and (not final_only or not isinstance(self._items[-1], TextDelta))

    async def _wait(self, final_only: bool, timeout: float | None) -> None:
        with self._lock:
            if self._ready(final_only):
                return
            waiter = self._waiter = self._loop.create_future()
            self._final_only = final_only
        timer = self._loop.call_later(timeout, resolve, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._waiter = None
                self._wake_pending = False
                self._final_only = False

    async def next_batch(self) -> list[Event]:
        """Every event that arrived since the last batch, no sooner than the gap allows for text."""
        if self._last is not None and self._min_gap > 0:
            gap = self._last + self._min_gap - self._loop.time()
            if gap > 0:  # sleep out the gap; text queued meanwhile does not wake the loop
                await self._wait(final_only=True, timeout=gap)
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    break
            await self._wait(final_only=False, timeout=None)
        self._last = self._loop.time()
        return items
