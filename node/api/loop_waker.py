"""Waking an asyncio loop from the engine thread without handing it the GIL mid-step.

`loop.call_soon_threadsafe` writes to the loop's self-pipe with `socket.send`, which releases the
GIL. The loop thread, woken by that very write, often takes the GIL first and runs its whole
turn (the request's coroutine, protobuf, the gRPC write) while the engine thread waits to get
the GIL back before it can sample the next sequence or start the next decode: per token, the
loop's work ends up on the engine's critical path (measured by bench/c1_profile.py as the wall
time of the engine's emit).

A `LoopWaker` (one per loop) writes its wake-up byte with a libc `write` called through
`ctypes.PyDLL`, which keeps the GIL: the loop thread wakes, waits for the GIL, and gets it when
the engine thread releases it anyway (in llama_decode), so its turn runs beside the decode.
Waiters woken in the same step share one wake-up of the loop (one byte, one turn) however many
requests are streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable


def _gil_keeping_write() -> Callable[[int, bytes, int], int] | None:
    try:
        fn = ctypes.PyDLL(None).write
    except (OSError, AttributeError):  # no libc write to call: os.write (releases the GIL) instead
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    fn.restype = ctypes.c_ssize_t
    return fn


_write = _gil_keeping_write()


def resolve(waiter: asyncio.Future[None]) -> None:
    """On the loop: end one wait (a wake-up that comes after its wait ended does nothing)."""
    if not waiter.done():
        waiter.set_result(None)


class LoopWaker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)  # never blocks: one byte at most until the loop has read it
        self._lock = threading.Lock()
        self._ready: deque[asyncio.Future[None]] = deque()
        self._poked = False
        loop.add_reader(self._rfd, self._run)
        weakref.finalize(loop, _close, self._rfd, self._wfd)

    def wake(self, waiter: asyncio.Future[None]) -> None:
        """From any thread: resolve `waiter` on its loop soon."""
        with self._lock:
            self._ready.append(waiter)
            if self._poked:
                return  # the loop has a wake-up coming that takes this one too
            self._poked = True
        if _write is not None:
            _write(self._wfd, b"\0", 1)
        else:
            os.write(self._wfd, b"\0")

    def _run(self) -> None:
        """On the loop: every waiter marked since the last turn."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        with self._lock:
            ready = list(self._ready)
            self._ready.clear()
            self._poked = False
        for waiter in ready:
            resolve(waiter)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def waker_for(loop: asyncio.AbstractEventLoop) -> LoopWaker:
    """The loop's waker (made on first use; call it on the loop's thread)."""
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = LoopWaker(loop)
        return waker
