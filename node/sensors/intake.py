"""The pipeline's first stage: sensor messages in, each recorded in the inbox and then acknowledged.

Its own MQTT session, persistent (clean start off, a session expiry), so the broker keeps QoS 1
sensor messages while the node is away, and with manual acknowledgement: a message is acked only
once its inbox row is committed (WAL, synchronous FULL). A message already known is acked and
dropped. When the inbox is full the message is held unacknowledged (the broker stops sending once
its receive maximum is reached) and accepted when room frees. A rule pushed to a group is
subscribed as `$share/<group>/<filter>`, so the group's nodes share its messages.

Rules are matched once per message: the message gets one inbox row per rule it matches and one
acknowledgement, however many rules' filters overlap (`subscriptions.py` keeps the broker from
sending it twice). Each accepted message is an `Accepted` item on the answerer's queue. Runs on
the MQTT network thread; held messages are tried again on the intake's own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt

from edgefleet.node.errors import StorageFull
from edgefleet.node.sensors.ledger import SensorLedger
from edgefleet.node.sensors.messages import message_id
from edgefleet.node.sensors.reports import Report, no_report
from edgefleet.node.sensors.stages import Accepted, AnswererQueue, RulesChanged
from edgefleet.node.sensors.stats import SensorStats
from edgefleet.node.sensors.subscriptions import EffectiveRule, subscription_filters
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import BadProperties, check_user_properties
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.rules import RuleSpec, topic_matches

log = logging.getLogger("edgefleet.node.sensors")

HELD_RETRY_S = 0.2  # how often held messages are offered to the inbox again
SUBACK_WAIT_S = 5.0  # a new rule is in effect once the broker confirmed its subscription (or this passed)

__all__ = ["EffectiveRule", "SensorIntake"]


class SensorIntake:
    def __init__(
        self,
        link: MqttLink,
        ledger: SensorLedger,
        stats: SensorStats,
        answerer: AnswererQueue,
        report: Report = no_report,
    ) -> None:
        self.link, self.ledger, self.stats = link, ledger, stats
        self.answerer = answerer  # the next stage's queue: an `Accepted` for each message recorded
        self.report = report
        self.storage_full = False  # the last inbox write found the disk full; held messages wait for room
        self._lock = threading.Lock()
        self._rules: dict[str, EffectiveRule] = {}
        self._subscriptions: set[str] = set()
        self._held: deque[mqtt.MQTTMessage] = deque()
        self._holding = threading.Event()  # set while messages are held
        self._stop = threading.Event()
        self._started = False  # the plane starts the link with the intake: from then on, rules wait for SUBACK
        self._thread = threading.Thread(target=self._retry_loop, name="edgefleet-sensor-held", daemon=True)

    def start(self) -> None:
        """Take held messages again as room frees (the plane starts the link: messages come in then)."""
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._holding.set()
        self._thread.join(10)

    def rules(self) -> dict[str, RuleSpec]:
        with self._lock:
            return {name: r for name, (r, _) in self._rules.items()}

    @property
    def holding(self) -> int:
        """Messages left unacknowledged because the inbox or the disk is full (the broker keeps the rest)."""
        return len(self._held)

    def set_rules(self, rules: dict[str, EffectiveRule]) -> None:
        """Match messages against these rules from now on; returns once the broker confirmed the new
        subscriptions (or SUBACK_WAIT_S passed, or the link is down: then they are made on connect)."""
        wanted = subscription_filters(rules)
        with self._lock:
            self._rules = dict(rules)
            gone, new = self._subscriptions - wanted, wanted - self._subscriptions
            self._subscriptions = wanted
        for f in gone:
            self.link.unsubscribe(f)
        confirmed = [self.link.subscribe_wait(f, self._on_message, timeout=SUBACK_WAIT_S) for f in sorted(new)]
        if self._started and not all(confirmed):  # not connected yet: subscribed (all at once) on connect
            self.link.wait_subscribed(SUBACK_WAIT_S)
        if gone or new:
            log.info("sensor subscriptions", extra={"subscribed": sorted(wanted)})
        self.answerer.put(RulesChanged())

    def _matching(self, topic: str) -> list[RuleSpec]:
        with self._lock:
            return [r for r, _ in self._rules.values() if topic_matches(r.topic_filter, topic)]

    # -- messages in (network thread) --------------------------------------------------------------------
    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        failpoints.hit("sensors.intake")
        rules = self._matching(msg.topic)
        with self._lock:
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
            self._holding.set()
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
        self.answerer.put(Accepted(msg.topic, tuple(r.name for r in rules)))
        return True

    # -- held messages (the intake's thread) ---------------------------------------------------------------
    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            self._holding.wait()
            if self._stop.wait(HELD_RETRY_S):
                return
            try:
                self._retry_held()
            except Exception:
                log.exception("taking held sensor messages failed")

    def _retry_held(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    self._holding.clear()
                    return
                msg = self._held[0]
            rules = self._matching(msg.topic)
            if rules and not self._accept(msg, rules):
                return
            with self._lock:
                self._held.popleft()
            self.link.ack(msg)
