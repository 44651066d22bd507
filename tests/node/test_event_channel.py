"""The engine → asyncio event channel: batches, the stream interval, and how often the loop is woken.

A real event loop and a real producer thread (as the engine's); the loop's cross-thread wake-ups
are counted by wrapping its LoopWaker.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

from edgefleet.node.api.event_channel import EventChannel
from edgefleet.node.api.loop_waker import waker_for
from edgefleet.node.engine.types import Event, Failed, Finished, FinishReason, TextDelta, Usage
from edgefleet.node.errors import EngineFailure

USAGE = Usage(1, 1, 0, 0.0, 0.0, 0.0, 0.0)


def counting_wakes(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts the loop's cross-thread wake-ups (the pokes of its LoopWaker)."""
    count = [0]
    waker = waker_for(loop)
    inner = waker.wake

    def counted(waiter: asyncio.Future[None]) -> None:
        count[0] += 1
        inner(waiter)

    waker.wake = counted
    return count


async def drain(channel: EventChannel) -> list[tuple[float, list[Event]]]:
    """Batches until a final event, each with the loop time it was taken."""
    loop = asyncio.get_running_loop()
    out: list[tuple[float, list[Event]]] = []
    while True:
        batch = await asyncio.wait_for(channel.next_batch(), 10)
        out.append((loop.time(), batch))
        if not isinstance(batch[-1], TextDelta):
            return out


def produce(channel: EventChannel, events: list[Event], every_s: float) -> threading.Thread:
    def run() -> None:
        for e in events:
            time.sleep(every_s)
            channel.put(e)

    t = threading.Thread(target=run, name="fake-engine")
    t.start()
    return t


def test_without_a_gap_every_event_reaches_the_coroutine_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        channel = EventChannel(loop)
        events: list[Event] = [TextDelta(str(i)) for i in range(20)] + [Finished(FinishReason.STOP, USAGE, "!")]
        t = produce(channel, events, 0.002)
        batches = await drain(channel)
        t.join()
        got = [e for _, b in batches for e in b]
        assert got == events

    asyncio.run(main())


def test_stream_interval_joins_text_without_waking_the_loop_and_never_holds_the_first_or_final() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = counting_wakes(loop)
        gap = 0.15
        channel = EventChannel(loop, gap)
        started = loop.time()
        events: list[Event] = [TextDelta(str(i)) for i in range(12)]
        t = produce(channel, events, 0.02)  # 12 tokens over ~0.24 s
        batches = await drain_texts(channel, 12)
        t.join()
        first_at, first = batches[0]
        assert first == [TextDelta("0")] and first_at - started < gap  # the first is not held
        assert [e for _, b in batches for e in b] == events
        assert len(batches) <= 4  # joined: 12 tokens, a batch at most every 0.15 s
        for (a, _), (b, _) in itertools.pairwise(batches):
            assert b - a >= gap * 0.9
        assert wakes[0] <= len(batches) + 1  # text inside the gap woke nothing
        before = loop.time()
        channel.put(TextDelta("x"))
        channel.put(Finished(FinishReason.LENGTH, USAGE, ""))  # the final one ends the gap at once
        at, final = (await drain(channel))[-1]
        assert final[-1] == Finished(FinishReason.LENGTH, USAGE, "") and at - before < gap * 0.9

    asyncio.run(main())


async def drain_texts(channel: EventChannel, n: int) -> list[tuple[float, list[Event]]]:
    loop = asyncio.get_running_loop()
    out: list[tuple[float, list[Event]]] = []
    while sum(len(b) for _, b in out) < n:
        batch = await asyncio.wait_for(channel.next_batch(), 10)
        out.append((loop.time(), batch))
    return out


def test_a_failure_from_the_engine_thread_ends_a_gap_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        channel = EventChannel(loop, 5.0)
        channel.put(TextDelta("a"))
        assert await channel.next_batch() == [TextDelta("a")]
        failed = Failed(EngineFailure("boom"))
        t = produce(channel, [TextDelta("b"), failed], 0.01)
        started = loop.time()
        batch = await asyncio.wait_for(channel.next_batch(), 4.0)
        t.join()
        assert batch == [TextDelta("b"), failed] and loop.time() - started < 2.0

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_channel_usable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        channel = EventChannel(loop)
        task = asyncio.create_task(channel.next_batch())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        channel.put(TextDelta("late"))  # no waiter: queued, no wake-up
        assert await asyncio.wait_for(channel.next_batch(), 2) == [TextDelta("late")]

    asyncio.run(main())


def test_one_loop_wake_up_serves_every_channel_woken_in_the_same_step() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes = counting_wakes(loop)
        channels = [EventChannel(loop) for _ in range(8)]
        tasks = [asyncio.create_task(c.next_batch()) for c in channels]
        await asyncio.sleep(0.05)  # every coroutine waits

        def step() -> None:  # as the engine: one token for each of 8 sequences
            for i, c in enumerate(channels):
                c.put(TextDelta(str(i)))

        turns: list[int] = []
        inner = waker_for(loop)._run

        def counted_run() -> None:
            turns.append(1)
            inner()

        loop.remove_reader(waker_for(loop)._rfd)
        loop.add_reader(waker_for(loop)._rfd, counted_run)
        t = threading.Thread(target=step)
        t.start()
        t.join()
        got = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert got == [[TextDelta(str(i))] for i in range(8)]
        assert wakes[0] == 8 and len(turns) == 1  # 8 waiters, one byte, one loop turn

    asyncio.run(main())
