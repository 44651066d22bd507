"""What nodes publish, into the registry (SQLite) and the fleet view (memory).

Node status, telemetry and reported state; desired-state documents as the broker hands them
back (our own echoes, or retained ones from before a restart, which rebuild a lost registry);
and the errors nodes report. Each arrives as (topic, payload): nothing here knows MQTT's client.
A payload that does not validate, or a node speaking for another, is refused on the errors topic.
"""

from __future__ import annotations

import logging
import time

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.desired_edits import DesiredSigner, PublishRetained
from edgefleet.orchestrator.error_reports import SOURCE, ErrorReporter
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.registry import Registry
from edgefleet.orchestrator.telemetry_history import TelemetryHistory
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
    ) -> None:
        self.site, self.topics, self.registry, self.view, self.errors = site, topics, registry, view, errors
        self.history = history
        self.signer, self.publish_retained = signer, publish_retained

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

    def reported(self, topic: str, payload: bytes) -> None:
        rep = self._parse(topic, payload, ReportedState)
        if rep is not None and self._from_node(topic, "reported", rep.node_id):
            self.registry.record_reported(rep)
            self.view.apply_reported(rep, time.time())

    def telemetry(self, topic: str, payload: bytes) -> None:
        t = self._parse(topic, payload, Telemetry)
        if t is not None and self._from_node(topic, "telemetry", t.node_id):
            self.registry.record_telemetry(t)
            self.view.apply_telemetry(t, time.time())
            if self.history is not None:
                self.history.record(t)

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
