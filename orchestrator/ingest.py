"""What nodes publish, into the registry (SQLite) and the fleet view (memory).

Node status, telemetry and reported state; desired-state documents as the broker hands them
back (our own echoes, or retained ones from before a restart, which rebuild a lost registry);
the errors nodes report, and their agent runs' reports (orchestrator/agent_runs.py). Each
arrives as (topic, payload): nothing here knows MQTT's client.
A payload that does not validate, or a node speaking for another, is refused on the errors topic.

Messages come in batches (orchestrator/ingest_queue.py): `apply` writes a batch in one registry
transaction and one fleet-view snapshot; each message is still checked, and refused, on its own.

Healing: a node that sends telemetry (or a fresh reported state) while the orchestrator does not
know it, or knows it as offline, had a status message lost on the way (a broker that dropped it
from a full queue, a restart in between). `StatusHealer` then subscribes to that node's status
topic alone for a moment: a new subscription is sent the retained status, which ingest takes as
any other; the subscription is dropped once it arrived. Nodes also announce themselves again
when the orchestrator's status turns `online` (node/control/agent.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.desired_edits import DesiredSigner, PublishRetained
from edgefleet.orchestrator.error_reports import SOURCE, ErrorReporter
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.ingest_queue import Message
from edgefleet.orchestrator.registry import Registry
from edgefleet.orchestrator.telemetry_history import TelemetryHistory
from edgefleet.plumbing import failpoints
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import (
    DesiredState,
    ErrorReport,
    NodeStatus,
    P,
    PayloadError,
    ReportedState,
    Telemetry,
    parse_payload,
)
from edgefleet.proto.signing import KeyRing, SignatureError
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.orchestrator.ingest")

FAILPOINT_MESSAGE = "orchestrator.ingest"  # passed before each message of a batch is applied
HEAL_AFTER_S = 3.0  # a status may be on its way behind telemetry (QoS 0 passes the broker's QoS 1 queue)
HEAL_FOR_S = 10.0  # how long a healing subscription waits for the retained status
HEAL_AGAIN_S = 15.0  # a node is healed at most this often (it may have no retained status at all)
HEAL_MAX = 1000  # healing subscriptions open at once; the others wait their turn


class StatusHealer:
    """Reads the retained status of nodes ingest heard from without knowing them.

    A node is healed when no status of it arrived `HEAL_AFTER_S` after the sign of life (in a burst
    its status is often just behind its telemetry). `subscribe(topic)` / `unsubscribe(topic)`: the
    orchestrator's MQTT link, whose handler for the topic queues the status like every other one."""

    def __init__(self, topics: Topics, subscribe: Callable[[str], None], unsubscribe: Callable[[str], None]) -> None:
        self.topics, self.subscribe, self.unsubscribe = topics, subscribe, unsubscribe
        self._lock = threading.Lock()
        self._waiting: dict[str, float] = {}  # node → when it was heard from, not known (not asked yet)
        self._open: dict[str, float] = {}  # node → when its healing subscription opened
        self._asked: dict[str, float] = {}  # node → when its status was last asked for
        self.healed = 0  # statuses that arrived on a healing subscription

    def want(self, node_id: str, now: float) -> None:
        with self._lock:
            if node_id in self._waiting or node_id in self._open:
                return
            if now - self._asked.get(node_id, -HEAL_AGAIN_S) >= HEAL_AGAIN_S:
                self._waiting[node_id] = now

    def arrived(self, node_id: str) -> None:
        """A status of the node arrived: no need to ask for it (any more)."""
        with self._lock:
            if self._waiting.pop(node_id, None) is not None or self._open.pop(node_id, None) is None:
                return
            self.healed += 1
        self.unsubscribe(self.topics.node_status(node_id))
        log.info("node status read again", extra={"node": node_id})

    def flush(self, now: float) -> None:
        """Open the subscriptions that are due; close those that waited too long (no retained status)."""
        with self._lock:
            room = max(0, HEAL_MAX - len(self._open))
            due = [n for n, t in self._waiting.items() if now - t >= HEAL_AFTER_S][:room]
            for n in due:
                del self._waiting[n]
                self._open[n] = self._asked[n] = now
            stale = [n for n, t in self._open.items() if now - t > HEAL_FOR_S]
            for n in stale:
                del self._open[n]
            if len(self._asked) > 4 * HEAL_MAX:  # forget old asks: the map stays bounded
                self._asked = {n: t for n, t in self._asked.items() if now - t < HEAL_AGAIN_S}
        for node_id in due:
            log.info(
                "heard from a node whose status is not known: reading its retained status", extra={"node": node_id}
            )
            try:
                self.subscribe(self.topics.node_status(node_id))
            except ValueError as e:  # InvalidTopic: an id no filter can name
                log.warning("cannot read the node's status", extra={"node": node_id[:200], "reason": str(e)})
        for node_id in stale:
            self.unsubscribe(self.topics.node_status(node_id))


class Ingest:
    def __init__(
        self,
        site: str,
        topics: Topics,
        registry: Registry,
        view: FleetView,
        errors: ErrorReporter,
        history: TelemetryHistory | None = None,
        signer: DesiredSigner | None = None,
        publish_retained: PublishRetained | None = None,
        healer: StatusHealer | None = None,
        agent_runs: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.site, self.topics, self.registry, self.view, self.errors = site, topics, registry, view, errors
        self.history = history
        self.signer, self.publish_retained = signer, publish_retained
        self.healer = healer
        self.agent_runs = agent_runs  # agent run reports (orchestrator/agent_runs.py `AgentRunIngest`)

    def apply(self, batch: list[Message]) -> None:
        """A batch: one registry transaction and one fleet-view snapshot; each message on its own
        (refused, or failed with the error logged, alone)."""
        handlers: dict[str, Callable[[Message], None]] = {
            "status": lambda m: self.node_status(m.topic, m.payload),
            "reported": lambda m: self.reported(m.topic, m.payload, m.retained),
            "telemetry": lambda m: self.telemetry(m.topic, m.payload),
            "desired": lambda m: self.desired(m.topic, m.payload),
            "error": lambda m: self.node_error(m.topic, m.payload),
            "agent_run": lambda m: self.agent_runs(m.topic, m.payload) if self.agent_runs else None,
        }
        with self.view.batch(), self.registry.batch():
            for m in batch:
                try:
                    failpoints.hit(FAILPOINT_MESSAGE)
                    handlers[m.kind](m)
                except Exception:  # as a failed MQTT handler: logged, the batch goes on
                    log.exception("message handler failed", extra={"topic": m.topic[:200], "kind": m.kind})

    def tick(self) -> None:
        """After each batch, and every second while none comes: healing subscriptions that are due."""
        if self.healer is not None:
            self.healer.flush(time.time())

    def _heard_from(self, node_id: str) -> None:
        """The node is alive: heal it when its status is unknown or says it is not online."""
        if self.healer is not None and self.view.state_of(node_id) != "online":
            self.healer.want(node_id, time.time())

    def _parse(self, topic: str, payload: bytes, model: type[P]) -> P | None:
        """The payload as `model`, or None: empty (a cleared retained message) or refused with a reason."""
        if not payload:
            return None
        try:
            return parse_payload(model, payload)
        except PayloadError as e:
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, str(e))
            return None

    def _from_node(self, topic: str, kind: str, payload_node: str) -> bool:
        """A node speaks only for itself: the payload's node id must be the topic's."""
        node_id = self.topics.node_of(topic, kind)
        if node_id != payload_node:
            self.errors.report(
                topic, ErrorCode.WRONG_NODE, f"{kind} of {brief(payload_node)} on the topic of {brief(node_id)}"
            )
            return False
        return True

    def node_status(self, topic: str, payload: bytes) -> None:
        status = self._parse(topic, payload, NodeStatus)
        if status is not None and self._from_node(topic, "status", status.node_id):
            self.registry.record_status(status)
            self.view.apply_status(status, time.time())
            log.info("node status", extra={"node": status.node_id, "state": status.state, "reason": status.reason})
            if self.healer is not None:
                self.healer.arrived(status.node_id)

    def reported(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """`retained`: sent on a (re)subscription, so not a sign of life (an offline node's is kept)."""
        rep = self._parse(topic, payload, ReportedState)
        if rep is not None and self._from_node(topic, "reported", rep.node_id):
            self.registry.record_reported(rep)
            self.view.apply_reported(rep, time.time())
            if not retained:
                self._heard_from(rep.node_id)

    def telemetry(self, topic: str, payload: bytes) -> None:
        t = self._parse(topic, payload, Telemetry)
        if t is not None and self._from_node(topic, "telemetry", t.node_id):
            self.registry.record_telemetry(t)
            self.view.apply_telemetry(t, time.time())
            if self.history is not None:
                self.history.record(t)
            self._heard_from(t.node_id)

    def desired(self, topic: str, payload: bytes) -> None:
        """Retained desired state (ours, echoed or from before a restart) rebuilds the registry."""
        doc = self._parse(topic, payload, DesiredState)
        if doc is None:
            return
        slot = self.topics.desired_target(topic)
        ours = doc.site == self.site and slot == (doc.target.kind, doc.target.name)
        ring = self._ring(topic)
        if ring is None:
            return
        if not ours:
            if ring and slot is not None:  # another site's or target's document moved into this slot
                self.errors.report(topic, ErrorCode.WRONG_TARGET, f"desired state for {doc.target.key} on {topic}")
                self._restore(topic, f"{slot[0]}:{slot[1]}", ring)
            return
        if ring:
            try:
                ring.verify(doc)
            except SignatureError as e:
                self.errors.report(topic, e.code, f"retained desired state not adopted: {e}")
                log.warning(
                    "forged desired state not adopted",
                    extra={"topic": topic, "target": doc.target.key, "generation": doc.generation, "code": e.code},
                )
                self._restore(topic, doc.target.key, ring)
                return
        if self.registry.record_desired(doc):
            self.view.apply_desired(doc)
        elif ring:  # a genuine but older document put back retained (a replay): the newest goes back over it
            log.warning("older desired state retained", extra={"topic": topic, "generation": doc.generation})
            self._restore(topic, doc.target.key, ring)

    def _ring(self, topic: str) -> KeyRing | None:
        """The keys echoes must be signed with: empty when the site has no key (taken unverified,
        as before signing), None when the site key cannot be read (nothing is adopted)."""
        if self.signer is None:
            return KeyRing()
        try:
            return self.signer.ring()
        except CommandError as e:
            self.errors.report(topic, e.code, f"retained desired state not adopted: {e}")
            return None

    def _restore(self, topic: str, key: str, ring: KeyRing) -> None:
        """Put the last genuine document back in the retained slot (or clear it when there is none)."""
        genuine = self.registry.desired(key)
        if genuine is not None:
            try:
                ring.verify(genuine)
            except SignatureError:
                genuine = None  # stored unsigned (before the site had a key): republishing it would loop
        if self.publish_retained is not None:
            self.publish_retained(topic, genuine.dumps() if genuine is not None else b"")
            log.info(
                "retained desired state restored",
                extra={"topic": topic, "generation": genuine.generation if genuine is not None else None},
            )

    def node_error(self, topic: str, payload: bytes) -> None:
        """An error a node reported: the latest one per node shows in the fleet view."""
        levels = self.topics.parse(topic)
        if not payload or not levels or levels[-1] == SOURCE:
            return
        try:
            report = parse_payload(ErrorReport, payload)
        except PayloadError:
            return  # not refused in turn: answering errors with errors could loop between parts
        if report.source == levels[-1]:
            self.view.apply_node_error(report)
