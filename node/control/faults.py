"""What the node does when something goes wrong on its MQTT side: report it, count it, try again.

Every MQTT handler that raises ends here (MqttLink's `on_handler_error`): an ErrorReport with a
typed code on the node's errors topic, a count in telemetry (`handler_errors`), and a retry of the
same handler on the same message where the cause can pass (a full disk, a lost broker) — with
backoff, until it passes; other causes are retried a few times, then the message is left to the
broker (a manual-ack message is redelivered at the next connect). Reports of one ongoing cause
are repeated at most once a minute, so a full disk does not flood the errors topic.

It also watches the data directory's free space for telemetry, GetNodeInfo and a warning below
`disk_warn_mb`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt

from edgefleet.node.errors import EdgefleetError, StorageFull, disk_space, is_disk_full
from edgefleet.node.errors import code_of as error_code
from edgefleet.plumbing.mqtt_link import Again
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import MAX_JSON_DEPTH, json_depth
from edgefleet.proto.payload_base import _Payload
from edgefleet.proto.payloads import MAX_PAYLOAD_BYTES, ErrorReport, PayloadError, parse_payload

log = logging.getLogger("edgefleet.node.faults")

P = TypeVar("P", bound=_Payload)
Publish = Callable[[str, bytes], object]
OTHER_ATTEMPTS = 5  # a cause that may not pass by itself (a bug): tries before leaving the message be
MAX_BACKOFF_S = 30.0
REPEAT_REPORT_S = 60.0


def transient(error: BaseException) -> bool:
    """A cause that passes by itself: a full disk, a lost connection."""
    return isinstance(error, StorageFull | ConnectionError | TimeoutError) or is_disk_full(error)


def _code(error: BaseException) -> ErrorCode:
    """The code a failed MQTT handler is reported with: a full disk wherever it surfaced, a node error's own."""
    if isinstance(error, StorageFull) or is_disk_full(error):
        return ErrorCode.STORAGE_FULL
    if isinstance(error, EdgefleetError):
        return error_code(error)
    return ErrorCode.HANDLER_ERROR


@dataclass
class _Retry:
    msg: mqtt.MQTTMessage
    again: Again
    attempts: int
    due: float


class NodeFaults:
    def __init__(self, node_id: str, errors_topic: str, data_dir: Path, warn_bytes: int, retry_s: float) -> None:
        self.node_id, self.errors_topic, self.data_dir = node_id, errors_topic, data_dir
        self.warn_bytes, self.retry_s = warn_bytes, retry_s
        self.handler_errors = 0
        self._publish: Publish | None = None
        self._lock = threading.Lock()
        self._retries: dict[tuple[str, int | None], _Retry] = {}
        self._last_report: dict[tuple[str, str], float] = {}
        self._low = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgefleet-retries", daemon=True)

    def bind(self, publish: Publish) -> None:
        """Where reports go (the agent's link)."""
        self._publish = publish

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    # -- reports --------------------------------------------------------------------------------------
    def report(self, code: str, message: str, topic: str = "", *, once_per: float = 0.0) -> None:
        """Log and publish an ErrorReport; with `once_per`, the same (code, topic) at most that often."""
        now = time.monotonic()
        with self._lock:
            last = self._last_report.get((code, topic))
            if once_per and last is not None and now - last < once_per:
                return
            self._last_report[(code, topic)] = now
        log.warning("error reported", extra={"code": code, "topic": topic[:200], "reason": message[:500]})
        publish = self._publish
        if publish is None:
            return
        report = ErrorReport(source=self.node_id, code=code, message=message[:2000], topic=topic[:1024])
        try:
            publish(self.errors_topic, report.dumps())
        except (ValueError, TypeError, OSError, RuntimeError) as e:
            log.warning("error report not sent", extra={"reason": str(e)})

    # -- handler errors (MqttLink's on_handler_error) -------------------------------------------------
    def hook(self, per_message: bool) -> Callable[[mqtt.MQTTMessage, BaseException, Again], None]:
        """The `on_handler_error` of one link. `per_message`: retry every message (a sensor link with
        manual acks); otherwise a newer message on a topic replaces the older one's retry (desired state)."""

        def on_handler_error(msg: mqtt.MQTTMessage, error: BaseException, again: Again) -> None:
            with self._lock:
                self.handler_errors += 1
                key = (msg.topic, msg.mid if per_message else None)
                self._retries[key] = _Retry(msg, again, 1, time.monotonic() + self.retry_s)
            self.report(_code(error), self._describe(msg, error, retried=True), msg.topic, once_per=REPEAT_REPORT_S)

        return on_handler_error

    @staticmethod
    def _describe(msg: mqtt.MQTTMessage, error: BaseException, retried: bool) -> str:
        then = "; it is tried again by itself" if retried else "; left to the broker (redelivered at reconnect)"
        return f"handling a message on {msg.topic[:200]} failed: {type(error).__name__}: {str(error)[:500]}{then}"

    def pending_retries(self) -> int:
        with self._lock:
            return len(self._retries)

    def _loop(self) -> None:
        while not self._stop.wait(min(0.5, self.retry_s)):
            try:
                self.retry_due()
            except Exception:
                log.exception("retrying handlers failed")

    def retry_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(k, r) for k, r in self._retries.items() if r.due <= now]
        for key, r in due:
            try:
                r.again()
            except Exception as e:
                with self._lock:
                    self.handler_errors += 1
                    give_up = not transient(e) and r.attempts >= OTHER_ATTEMPTS
                    if give_up:
                        self._retries.pop(key, None)
                    else:
                        r.attempts += 1
                        r.due = now + min(MAX_BACKOFF_S, self.retry_s * 2 ** min(r.attempts - 1, 6))
                self.report(_code(e), self._describe(r.msg, e, not give_up), r.msg.topic, once_per=REPEAT_REPORT_S)
                continue
            with self._lock:
                if self._retries.get(key) is r:
                    del self._retries[key]
            log.info("message handled on retry", extra={"topic": r.msg.topic[:200], "attempts": r.attempts + 1})

    # -- disk ---------------------------------------------------------------------------------------------
    def disk(self) -> tuple[int, int, bool]:
        """(free bytes, total bytes, low) of the data directory; logs a warning when it goes low."""
        free, total = disk_space(self.data_dir)
        low = total > 0 and free < self.warn_bytes
        if low and not self._low:
            log.warning(
                "disk space low",
                extra={
                    "data_dir": str(self.data_dir),
                    "free_bytes": free,
                    "total_bytes": total,
                    "warn_bytes": self.warn_bytes,
                },
            )
        elif self._low and not low:
            log.info("disk space back above the warning level", extra={"free_bytes": free})
        self._low = low
        return free, total, low


def parse_bounded(model: type[P], raw: bytes | bytearray) -> P:
    """`parse_payload` after a nesting check: JSON 100,000 levels deep is a PayloadError, not a RecursionError."""
    if len(raw) <= MAX_PAYLOAD_BYTES:
        text = bytes(raw).decode("utf-8", "replace")
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise PayloadError(f"payload nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    return parse_payload(model, raw)


# Fail points of the node's MQTT side (plumbing/failpoints.py; off unless EDGEFLEET_FAILPOINTS names them).
AGENT_BEFORE_PUBLISH = "agent.before_publish"
"""An agent's `act` call: its effect row (and any approval) recorded, the publish not yet made."""
