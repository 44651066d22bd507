"""A live feed of sensor messages and the answers to them, per rule, with the latency seen here.

The console subscribes (plain subscriptions: a shared group's nodes still get every message) to
each desired rule's topic filter and to its output topic (placeholders as `+`; the default is
`results/<node>`), notes when each message arrived, and pairs each `SensorResult` with its
message by (topic, id): latency is answer arrival minus message arrival, both on this clock.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.payloads import PayloadError, parse_payload
from edgefleet.proto.rules import SensorResult, topic_matches
from edgefleet.proto.topics import Topics

PLACEHOLDER_RE = re.compile(r"\{[A-Za-z0-9_]+\}")


def message_id(topic: str, payload: bytes, user_properties: list[tuple[str, str]]) -> str:
    """The id a node gives a sensor message (README "Sensor rules"): msg-id, the JSON `id`, else a hash."""
    for key, value in user_properties:
        if key == "msg-id" and value:
            return value
    try:
        data = json.loads(payload) if payload.lstrip()[:1] == b"{" else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("id"), str | int) and not isinstance(data.get("id"), bool):
        return str(data["id"])
    return "sha256:" + hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()


def output_filter(topics: Topics, output_topic: str | None) -> str:
    return PLACEHOLDER_RE.sub("+", output_topic) if output_topic else topics.results("+")


class SensorFeed:
    def __init__(self, topics: Topics, link: MqttLink, on_change: Callable[[], None]) -> None:
        self.topics, self.link, self.on_change = topics, link, on_change
        self._lock = threading.Lock()
        self._rules: dict[str, dict[str, Any]] = {}  # "target/rule" → rule fields
        self._filters: set[str] = set()
        self._arrived: dict[tuple[str, str], float] = {}  # (topic, id) → arrival
        self.feed: deque[dict[str, Any]] = deque(maxlen=200)

    def watch_rules(self, rules_by_target: dict[str, dict[str, Any]]) -> None:
        rules = {f"{t}/{n}": r for t, rs in rules_by_target.items() for n, r in rs.items()}
        wanted = {r["topic_filter"] for r in rules.values()} | {
            output_filter(self.topics, r.get("output_topic")) for r in rules.values()
        }
        with self._lock:
            self._rules = rules
            added, removed = wanted - self._filters, self._filters - wanted
            self._filters = wanted
        for flt in removed:
            self.link.unsubscribe(flt)
        for flt in added:
            self.link.subscribe(flt, self._on_message)

    def _on_message(self, msg: Any) -> None:
        now = time.time()
        payload = bytes(msg.payload)
        result = None
        if payload.startswith(b"{") and b'"source_topic"' in payload:
            try:
                result = parse_payload(SensorResult, payload)
            except PayloadError:
                result = None
        with self._lock:
            if result is not None:
                arrived = self._arrived.pop((result.source_topic, result.source_id), None)
                self.feed.appendleft(
                    {
                        "ts": now,
                        "kind": "answer",
                        "rule": result.rule,
                        "topic": result.source_topic,
                        "source_id": result.source_id,
                        "node": result.node_id,
                        "ok": result.ok,
                        "text": (result.answer_text or result.error)[:300],
                        "error_code": result.error_code,
                        "latency_ms": None if arrived is None else round((now - arrived) * 1000, 1),
                        "model_ms": result.total_ms,
                    }
                )
            else:
                matching = sorted(
                    k.rsplit("/", 1)[1] for k, r in self._rules.items() if topic_matches(r["topic_filter"], msg.topic)
                )
                if not matching:
                    return
                props = getattr(msg.properties, "UserProperty", None) or []
                sid = message_id(msg.topic, payload, list(props))
                self._arrived[(msg.topic, sid)] = now
                while len(self._arrived) > 5000:
                    self._arrived.pop(next(iter(self._arrived)))
                self.feed.appendleft(
                    {
                        "ts": now,
                        "kind": "message",
                        "rule": ",".join(matching),
                        "topic": msg.topic,
                        "source_id": sid,
                        "text": payload[:300].decode("utf-8", "replace"),
                    }
                )
        self.on_change()

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.feed)
