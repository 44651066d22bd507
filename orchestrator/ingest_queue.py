"""What nodes publish, off paho's network thread and in batches.

MQTT callbacks only put (kind, topic, payload, retained) on a bounded queue; one ingest thread
takes what is there, up to `max_batch` messages or `max_wait_s` after the first, and hands the
batch to `apply` (orchestrator/ingest.py: one SQLite transaction, one fleet-view snapshot).

Why: a consumer that commits each message on its own (and rebuilt the fleet view per message)
falls behind a burst of births (every broker restart or power cut brings all nodes back at
once); the broker then queues for it past its per-client limit (Mosquitto: max_queued_messages)
and drops births. Taken off the network thread, messages are acknowledged as fast as they come.

A full queue (the ingest thread stalled: a disk that hangs) makes the network thread wait up to
`put_wait_s`, so the broker holds the rest for the orchestrator's session; past that the message
is dropped with an error logged (a lost status heals: see `StatusHealer` in ingest.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edgefleet.plumbing.mqtt_link import Handler

log = logging.getLogger("edgefleet.orchestrator.ingest")

MAX_BATCH = 500  # messages applied in one transaction
MAX_WAIT_S = 0.05  # a batch is applied at most this long after its first message arrived
CAPACITY = 20_000  # messages waiting; about 20 MB of payloads at most (1 KiB each)
PUT_WAIT_S = 5.0  # how long the network thread waits for room before it drops a message
TICK_S = 1.0  # `tick` runs after each batch, and this often while no message comes


@dataclass(frozen=True)
class Message:
    kind: str  # which Ingest method takes it: status, reported, telemetry, desired, error, agent_run
    topic: str
    payload: bytes
    retained: bool  # sent because it was retained (a (re)subscription), not because it was just published


class IngestQueue:
    def __init__(
        self,
        apply: Callable[[list[Message]], None],
        max_batch: int = MAX_BATCH,
        max_wait_s: float = MAX_WAIT_S,
        capacity: int = CAPACITY,
        put_wait_s: float = PUT_WAIT_S,
        tick: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1 or capacity < max_batch or max_wait_s < 0:
            raise ValueError(f"max_batch ({max_batch}) must be ≥ 1 and ≤ capacity ({capacity}), max_wait_s ≥ 0")
        self.apply, self.max_batch, self.max_wait_s, self.put_wait_s = apply, max_batch, max_wait_s, put_wait_s
        self.tick = tick
        self._queue: queue.Queue[Message | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._busy = 0  # messages taken off the queue and not yet applied
        self.dropped = 0  # messages dropped because the queue stayed full
        self.applied = 0  # messages applied (batches: `batches`)
        self.batches = 0

    def handler(self, kind: str) -> Handler:
        """An MQTT handler (network thread) that queues each message for `kind`."""

        def enqueue(msg: mqtt.MQTTMessage) -> None:
            self.put(Message(kind, msg.topic, bytes(msg.payload), bool(msg.retain)))

        return enqueue

    def put(self, message: Message) -> None:
        try:
            self._queue.put_nowait(message)
            return
        except queue.Full:
            log.warning("ingest queue full: the network thread waits", extra={"capacity": self._queue.maxsize})
        try:
            self._queue.put(message, timeout=self.put_wait_s)
        except queue.Full:
            self.dropped += 1
            log.error(
                "ingest queue full: message dropped",
                extra={"topic": message.topic[:200], "kind": message.kind, "dropped": self.dropped},
            )

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # -- the ingest thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Apply what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Until every message queued so far is applied (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0 and self._queue.empty(), timeout)

    def _take(self) -> tuple[list[Message], bool]:
        """The next batch (empty when none came for `TICK_S`) and whether the queue was told to stop."""
        try:
            first = self._queue.get(timeout=TICK_S)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        with self._idle:
            self._busy += 1
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            with self._idle:
                self._busy += 1
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            if not batch:
                self._tick()
                continue
            started = time.monotonic()
            try:
                self.apply(batch)
            except Exception:  # the batch is lost (its transaction rolled back); the thread goes on
                log.exception("ingest batch failed", extra={"messages": len(batch)})
            self.applied += len(batch)
            self.batches += 1
            log.debug(
                "ingest batch applied",
                extra={"messages": len(batch), "ms": round((time.monotonic() - started) * 1000, 1)},
            )
            with self._idle:
                self._busy -= len(batch)
                self._idle.notify_all()
            self._tick()

    def _tick(self) -> None:
        if self.tick is not None:
            try:
                self.tick()
            except Exception:
                log.exception("ingest tick failed")
