"""Sends the artifact chunks nodes ask for, one at a time, each confirmed by the broker (PUBACK).

Requests from several nodes of a group for the same chunk are merged (a chunk is queued once per
scope: the target it was pushed to, `group/<g>` or `node/<n>`, whose topics it is published on),
and a chunk the broker did not confirm (it went away) goes back to the front of the queue and
waits for the connection. An optional pause between chunks keeps a weak site link usable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.artifacts import Manifest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.orchestrator.chunks")

ChunkKey = tuple[str, str, int]  # (sha256, scope, index)


class ChunkSender:
    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        read_chunk: Callable[[Manifest, int], bytes],
        interval_s: float = 0.0,
        errors: ErrorReporter | None = None,
    ) -> None:
        """`errors`: told of a chunk that could not be published at all (it is dropped, the rest go on)."""
        self.link = link
        self.errors = errors
        self.topics = topics
        self.read_chunk = read_chunk
        self.interval_s = interval_s
        self._queue: OrderedDict[ChunkKey, Manifest] = OrderedDict()
        self._cond = threading.Condition()
        self._stop = False
        self.sent: dict[str, int] = {}  # sha256 → chunks published
        self._thread = threading.Thread(target=self._run, name="edgefleet-chunks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5)

    def enqueue(self, manifest: Manifest, scope: str, indices: list[int]) -> int:
        """Queue chunks not queued yet, to publish on `scope`'s chunk topics; returns how many were added."""
        added = 0
        with self._cond:
            for i in indices:
                key = (manifest.sha256, scope, i)
                if key not in self._queue:
                    self._queue[key] = manifest
                    added += 1
            self._cond.notify()
        return added

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                key, manifest = next(iter(self._queue.items()))
                sha, scope, index = key
            if not self.link.connected.wait(1.0):
                continue
            topic = self.topics.artifact_chunk(scope, manifest.kind, manifest.name, manifest.version, index)
            try:
                data = self.read_chunk(manifest, index)
            except OSError as e:
                log.error("chunk unreadable", extra={"artifact": manifest.label, "chunk": index, "reason": str(e)})
                with self._cond:
                    self._queue.pop(key, None)
                continue
            try:
                confirmed = self.link.publish_wait(topic, data, timeout=10.0)
            except Exception as e:  # one bad chunk must not end the thread that serves every transfer
                self._drop(key, manifest, topic, e)
                continue
            if not confirmed:
                log.warning("chunk not confirmed; will resend", extra={"artifact": manifest.label, "chunk": index})
                time.sleep(0.2)
                continue
            with self._cond:
                self._queue.pop(key, None)
                self.sent[sha] = self.sent.get(sha, 0) + 1
            if self.interval_s:
                time.sleep(self.interval_s)

    def _drop(self, key: ChunkKey, manifest: Manifest, topic: str, e: Exception) -> None:
        _, _, index = key
        log.exception("chunk not publishable; dropped", extra={"artifact": manifest.label, "chunk": index})
        with self._cond:
            self._queue.pop(key, None)
        if self.errors is not None:
            try:
                self.errors.report(topic, ErrorCode.INTERNAL, f"{manifest.label}: chunk {index} not published: {e}")
            except Exception:
                log.exception("chunk error not reported", extra={"artifact": manifest.label, "chunk": index})
