"""Batch ingest in process: the real queue, ingest, registry (SQLite) and fleet view; no broker.

What the end-to-end tests (test_ingest_batches.py) cannot see from outside: a batch is one
transaction and one snapshot, a bad message in it is refused alone, and when healing asks for a
node's retained status.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.ingest import HEAL_AFTER_S, HEAL_AGAIN_S, HEAL_FOR_S, Ingest, StatusHealer
from edgefleet.orchestrator.ingest_queue import IngestQueue, Message
from edgefleet.orchestrator.registry import Registry, open_registry
from edgefleet.plumbing import failpoints
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry
from edgefleet.proto.topics import Topics

T = Topics.for_site("lab")
INFO = NodeInfoPayload(profile="x86-dev", groups=["all"], model=ModelRef(name="m"))


def birth(node_id: str, on_topic_of: str | None = None) -> Message:
    status = NodeStatus(node_id=node_id, state="online", info=INFO)
    return Message("status", T.node_status(on_topic_of or node_id), status.dumps(), retained=False)


def telemetry(node_id: str) -> Message:
    t = Telemetry(
        node_id=node_id,
        queue_depth=0,
        slots_busy=0,
        slots_total=1,
        slots_available=1,
        tokens_per_second=0,
        temperature_c=None,
        throttled=False,
        shedding=False,
        rss_bytes=1,
    )
    return Message("telemetry", T.node_telemetry(node_id), t.dumps(), retained=False)


class Parts:
    """Ingest with a real registry and fleet view; what it publishes (error reports) is kept."""

    def __init__(self, tmp: Path, healer: StatusHealer | None = None) -> None:
        self.registry = Registry(open_registry(tmp / "registry.db"))
        self.view = FleetView()
        self.published: list[tuple[str, bytes]] = []
        errors = ErrorReporter(T, lambda topic, payload: self.published.append((topic, payload)))
        self.ingest = Ingest("lab", T, self.registry, self.view, errors, healer=healer)
        self.statements: list[str] = []
        self.registry.db.conn.set_trace_callback(self.statements.append)

    def commits(self) -> int:
        return sum(1 for s in self.statements if s.strip().upper() == "COMMIT")

    def error_codes(self) -> list[str]:
        return [json.loads(p)["code"] for _, p in self.published]


def test_a_batch_is_one_transaction_and_one_snapshot(tmp_path: Path) -> None:
    """1,200 messages queued before the ingest thread starts: three batches (500, 500, 200), three
    commits, three new snapshots; every node is in the registry and the fleet view."""
    parts = Parts(tmp_path)
    queue = IngestQueue(parts.ingest.apply, max_batch=500, max_wait_s=0.05)
    for i in range(1200):
        queue.put(birth(f"n{i:04d}"))
    version = parts.view.snapshot().version
    queue.start()
    try:
        assert queue.wait_idle(30)
    finally:
        queue.stop()
    assert (queue.batches, queue.applied, queue.dropped) == (3, 1200, 0)
    assert parts.commits() == 3
    assert parts.view.snapshot().version == version + 3
    assert len(parts.view.snapshot().online()) == 1200
    assert len(parts.registry.node_ids()) == 1200


def test_a_bad_message_in_a_batch_is_refused_alone(tmp_path: Path) -> None:
    """Invalid JSON, a node speaking for another and a failed handler (fail point) leave the rest of
    their batch applied; the first two are refused on the errors topic with their codes."""
    parts = Parts(tmp_path)
    bad = Message("status", T.node_status("b"), b"{not json", retained=False)
    failpoints.configure("orchestrator.ingest=raise-once-after:3")  # the fourth message fails
    try:
        parts.ingest.apply([birth("a"), bad, birth("c", on_topic_of="d"), birth("lost"), birth("e")])
    finally:
        failpoints.configure("")
    assert parts.registry.node_ids() == {"a", "e"}
    assert {n.node_id for n in parts.view.snapshot().online()} == {"a", "e"}
    assert parts.error_codes() == [ErrorCode.INVALID_PAYLOAD, ErrorCode.WRONG_NODE]
    assert parts.commits() == 1


class Link:
    """Stands for the MQTT link's subscribe / unsubscribe: records the topics."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []


def test_healing_asks_for_the_status_of_a_node_heard_from_but_not_known(tmp_path: Path) -> None:
    link = Link()
    healer = StatusHealer(T, link.subscribed.append, link.unsubscribed.append)
    parts = Parts(tmp_path, healer)
    parts.ingest.apply([birth("known"), telemetry("known"), telemetry("stranger")])
    t0 = time.time()  # ingest noted the stranger just before (the healer is told the wall clock)
    healer.flush(t0 + HEAL_AFTER_S / 2)
    assert link.subscribed == []  # its status may be just behind its telemetry
    healer.flush(t0 + HEAL_AFTER_S + 0.1)
    assert link.subscribed == [T.node_status("stranger")] and "known" not in str(link.subscribed)
    # the retained status arrives on that subscription: ingested, the subscription dropped
    parts.ingest.apply([birth("stranger")])
    assert link.unsubscribed == [T.node_status("stranger")] and healer.healed == 1
    assert parts.view.state_of("stranger") == "online"


def test_healing_is_bounded_per_node(tmp_path: Path) -> None:
    """A node without a retained status: its subscription is closed after HEAL_FOR_S, and it is not
    asked for again before HEAL_AGAIN_S; a status in the same moment as the sign of life asks nothing."""
    link = Link()
    healer = StatusHealer(T, link.subscribed.append, link.unsubscribed.append)
    t0 = 1000.0
    healer.want("mute", t0)
    healer.flush(t0 + HEAL_AFTER_S)
    healer.flush(t0 + HEAL_AFTER_S + HEAL_FOR_S + 0.1)
    assert link.unsubscribed == [T.node_status("mute")]
    healer.want("mute", t0 + HEAL_AFTER_S + 1)
    healer.flush(t0 + HEAL_AFTER_S + HEAL_FOR_S + 1)
    assert link.subscribed == [T.node_status("mute")]  # once: too soon to ask again
    healer.want("mute", t0 + HEAL_AFTER_S + HEAL_AGAIN_S)
    healer.flush(t0 + 2 * HEAL_AFTER_S + HEAL_AGAIN_S)
    assert link.subscribed == [T.node_status("mute")] * 2
    healer.want("quick", t0)
    healer.arrived("quick")  # its birth was right behind its telemetry
    healer.flush(t0 + HEAL_AFTER_S)
    assert T.node_status("quick") not in link.subscribed and healer.healed == 0
