"""The node's sensor connection: messages in through the inbox, results out through the outbox.

Its own MQTT session, persistent (clean start off, a session expiry), so the broker keeps QoS 1
sensor messages while the node is away, and with manual acknowledgement: a message is acked only
once its inbox row is committed (WAL, synchronous FULL). A message already known is acked and
dropped. When the inbox is full the message is held unacknowledged (the broker stops sending once
its receive maximum is reached) and accepted when room frees. A rule pushed to a group is
subscribed as `$share/<group>/<filter>`, so the group's nodes share its messages.

The publisher sends the outbox in order, one QoS 1 message at a time, and deletes a row only on
its PUBACK; while the broker is away the rows wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as mqtt

from edgefleet.node.errors import StorageFull
from edgefleet.node.sensors.ledger import SensorLedger
from edgefleet.node.sensors.messages import message_id
from edgefleet.node.sensors.stats import SensorStats
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import BadProperties, check_user_properties
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.rules import RuleSpec, shared_filter, topic_matches

log = logging.getLogger("edgefleet.node.sensors")


class Report(Protocol):
    def __call__(self, code: str, message: str, topic: str = "", *, once_per: float = 0.0) -> None: ...


EffectiveRule = tuple[RuleSpec, str | None]  # the rule and the group that shares it (None: this node only)


class SensorIntake:
    def __init__(
        self,
        link: MqttLink,
        ledger: SensorLedger,
        stats: SensorStats,
        answered: Callable[[], None],
        report: Report | None = None,
    ) -> None:
        self.link, self.ledger, self.stats = link, ledger, stats
        self.report: Report = report or (lambda code, message, topic="", **_: None)
        self.storage_full = False  # the last inbox write found the disk full; held messages wait for room
        self._published: set[int] = set()  # outbox rows published whose deletion waits for room
        self.answered = answered  # wakes the answerer
        self._lock = threading.Lock()
        self._rules: dict[str, EffectiveRule] = {}
        self._subscriptions: set[str] = set()
        self._held: deque[mqtt.MQTTMessage] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._publisher = threading.Thread(target=self._publish_loop, name="edgefleet-outbox", daemon=True)

    def start(self) -> None:
        self._publisher.start()
        self.link.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._publisher.join(10)
        self.link.stop()

    def rules(self) -> dict[str, RuleSpec]:
        with self._lock:
            return {name: r for name, (r, _) in self._rules.items()}

    @property
    def holding(self) -> int:
        """Messages left unacknowledged because the inbox or the disk is full (the broker keeps the rest)."""
        return len(self._held)

    def set_rules(self, rules: dict[str, EffectiveRule]) -> None:
        wanted = {shared_filter(g, r.topic_filter) if g else r.topic_filter for r, g in rules.values()}
        with self._lock:
            self._rules = dict(rules)
            gone, new = self._subscriptions - wanted, wanted - self._subscriptions
            self._subscriptions = wanted
        for f in gone:
            self.link.unsubscribe(f)
        for f in new:
            self.link.subscribe(f, self._on_message)
        if gone or new:
            log.info("sensor subscriptions", extra={"subscribed": sorted(wanted)})

    # -- messages in (network thread) --------------------------------------------------------------------
    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        failpoints.hit("sensors.intake")
        with self._lock:
            rules = [r for r, _ in self._rules.values() if topic_matches(r.topic_filter, msg.topic)]
            if self._held:  # keep arrival order behind what is already waiting for room
                self._held.append(msg)
                return
        if not rules:
            log.info("message matches no rule; dropped", extra={"topic": msg.topic})
            self.link.ack(msg)
            return
        if self._accept(msg, rules):
            self.link.ack(msg)
        else:
            with self._lock:
                self._held.append(msg)
            log.warning("inbox or disk full: holding messages unacknowledged", extra={"topic": msg.topic})

    def _accept(self, msg: mqtt.MQTTMessage, rules: list[RuleSpec]) -> bool:
        """Record the message for each rule it matches; False when the inbox or the disk had no room."""
        try:
            props = check_user_properties(msg)
        except BadProperties as e:  # the message is still taken, identified by its payload
            self.report(
                ErrorCode.BAD_PROPERTIES,
                f"user properties of a message on {msg.topic} ignored: {e}",
                msg.topic,
                once_per=60.0,
            )
            props = []
        mid = message_id(msg.topic, bytes(msg.payload), props)
        received = time.time()
        for rule in rules:
            # Keep at most one byte past the rule's limit: enough to answer `payload_too_large`.
            payload = bytes(msg.payload[: rule.max_payload_bytes + 1])
            try:
                outcome = self.ledger.accept(mid, rule.name, msg.topic, payload, received)
            except StorageFull as e:
                self.storage_full = True
                self.report(
                    ErrorCode.STORAGE_FULL,
                    f"sensor message on {msg.topic} held unacknowledged until there is room: {e}",
                    msg.topic,
                    once_per=60.0,
                )
                return False
            if outcome == "full":
                return False
            self.stats.message_in(rule.name, duplicate=outcome == "duplicate")
        if self.storage_full:
            self.storage_full = False
            log.info("disk has room again: held sensor messages are taken")
        self.answered()
        return True

    def _retry_held(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    return
                msg = self._held[0]
                rules = [r for r, _ in self._rules.values() if topic_matches(r.topic_filter, msg.topic)]
            if rules and not self._accept(msg, rules):
                return
            with self._lock:
                self._held.popleft()
            self.link.ack(msg)

    # -- results out ----------------------------------------------------------------------------------------
    def wake_publisher(self) -> None:
        self._wake.set()

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                self._retry_held()
                self._drain_outbox()
            except Exception:
                log.exception("outbox step failed")

    def _drain_outbox(self) -> None:
        while self.link.connected.is_set() and not self._stop.is_set():
            rows = self.ledger.outbox_batch(64)
            if not rows:
                return
            for row in rows:
                if row.seq not in self._published:
                    if not self.link.publish_wait(row.topic, row.payload, timeout=10.0):
                        return  # the broker went away: the row stays and goes out first when it is back
                    self._published.add(row.seq)
                try:
                    self.ledger.outbox_delete(row.seq)
                except StorageFull:  # published already: deleted when there is room, not sent again
                    return
                self._published.discard(row.seq)
