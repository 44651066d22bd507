"""A push to a group of 200: the CLI says how many applied it and names the stragglers, in a few
lines, not 200 (issue 23). A real Mosquitto, the real orchestrator and the real CLI; the 200 nodes
are simulated at the MQTT contract (proto/topics.py, proto/payloads.py: a retained birth with its
info, a reported state echoing each desired generation), which is all the orchestrator sees of a
node: allowed here as a scale stand-in, never in place of a real node's behaviour.

And the pure formatting of the counts and the stragglers (fleet/applied.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.fleet import applied
from edgefleet.fleet.control import OrchestratorSession
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.payloads import (
    DesiredState,
    ModelRef,
    NodeInfoPayload,
    NodeStatus,
    PayloadError,
    ReportedState,
    parse_payload,
)
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, fleet

NODES = 200
STRAGGLERS = {"sim-007", "sim-100", "sim-199"}  # online, never apply
FAILING = {"sim-042": "template triage: unknown variable 'x'"}  # online, reports why it cannot apply
OFFLINE = {"sim-150"}  # said offline: applies when it connects


class SimulatedFleet:
    """NODES nodes of group `line` at the contract, on one MQTT connection: retained births, and a
    retained reported state for each desired generation of `group:line`, but from the stragglers
    (none) and the failing node (its error instead)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.topics = Topics.for_site("lab")
        self.ids = [f"sim-{i:03d}" for i in range(NODES)]
        self.applied: dict[str, int] = {}
        self.client = broker.client("sim-fleet")
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(self.topics.desired_group("line"), qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_desired
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10), "the simulated fleet could not subscribe"
        info = NodeInfoPayload(profile="x86-dev", groups=["line"], model=ModelRef(name="smol"), grpc_address="")
        for node_id in self.ids:
            state = "offline" if node_id in OFFLINE else "online"
            birth = NodeStatus(node_id=node_id, state=state, info=info)
            self._publish(self.topics.node_status(node_id), birth.dumps())

    def _publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True)

    def _on_desired(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = parse_payload(DesiredState, bytes(msg.payload))
        except PayloadError:
            return
        for node_id in self.ids:
            if node_id in STRAGGLERS or node_id in OFFLINE:
                continue
            if node_id in FAILING:
                rep = ReportedState(node_id=node_id, groups=["line"], errors=[FAILING[node_id]])
            else:
                rep = ReportedState(node_id=node_id, groups=["line"], generations={doc.target.key: doc.generation})
            self._publish(self.topics.node_reported(node_id), rep.dumps())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    tmp = tmp_path_factory.mktemp("push-progress")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    sims = SimulatedFleet(broker)
    try:
        settings = FleetSettings(mqtt_url=broker.url, site="lab")

        def registered() -> bool:
            try:
                with OrchestratorSession(settings, 5) as s:
                    return len(applied.target_rows(s, "group:line", 10)) == NODES
            except Exception:  # the orchestrator may still be starting
                return False

        assert wait_for(registered, timeout=60), "the 200 simulated nodes were never all listed"
        yield broker
    finally:
        sims.close()
        orch.stop()
        broker.stop()


def test_a_push_to_200_nodes_prints_counts_and_names_the_stragglers_not_200_lines(
    site: Mosquitto, tmp_path: Path
) -> None:
    f = tmp_path / "triage.j2"
    f.write_text("Sensor {{ sensor }} reports {{ reading }}. Is this a fault?")
    push = ("fleet", "push-template", str(f), "--name", "triage", "--target", "group:line", "--wait", "4")
    r = fleet(site, *push, "--version", "1")
    assert r.returncode == 1, "online nodes did not apply it: " + r.stdout + r.stderr
    out = r.stdout
    lines = out.splitlines()
    assert len(lines) < 20, f"a few lines, not one per node:\n{out}"
    assert "published for group:line as generation 1" in lines[0], out
    assert "195 of 200 node(s) of group:line applied generation 1" in out, out
    pending = next(line for line in lines if line.strip().startswith("pending"))
    assert pending.strip() == "pending, NOT applied within 4 s (3): sim-007, sim-100, sim-199", out
    failed = next(line for line in lines if line.strip().startswith("failed"))
    assert failed.strip() == f"failed, NOT applied (1): sim-042 ({FAILING['sim-042']})", out
    offline = next(line for line in lines if line.strip().startswith("offline"))
    assert offline.strip() == "offline, applies 1 when it connects (1): sim-150", out
    assert lines[-1] == "4 of 200 node(s) of group:line did not apply generation 1", out
    named = {w.strip(",()") for w in out.split() if w.startswith("sim-")}
    assert named == STRAGGLERS | set(FAILING) | OFFLINE, "only the stragglers are named"

    r = fleet(site, *push, "--version", "2", "--each")
    each = [line for line in r.stdout.splitlines() if line.startswith("  sim-")]
    assert r.returncode == 1 and len(each) == NODES, "--each: one line per node"
    assert sum("applied generation 2" in line for line in each) == 195, r.stdout


def tally_of(applied_n: int, pending: list[str], failed: list[tuple[str, str]], offline: list[str]) -> applied.Tally:
    return applied.Tally([f"ok-{i:04d}" for i in range(applied_n)], pending, failed, offline)


def test_the_progress_line_and_the_outcome_name_at_most_20_stragglers_per_kind() -> None:
    t = tally_of(970, [f"p-{i:02d}" for i in range(25)], [("f-1", "disk full")], [])
    assert applied.progress_line(t, 3) == "generation 3: 970 applied, 25 pending, 1 failed, 0 offline (of 996)"
    lines = applied.outcome_lines(t, "group:line", 3, 10)
    assert lines[0] == "970 of 996 node(s) of group:line applied generation 3"
    names = ", ".join(f"p-{i:02d}" for i in range(20))
    assert lines[1] == f"  pending, NOT applied within 10 s (25): {names} and 5 more"
    assert lines[2] == "  failed, NOT applied (1): f-1 (disk full)"
    assert lines[3] == "26 of 996 node(s) of group:line did not apply generation 3"
    assert len(lines) == 4, "no offline line when none is offline"
    done = applied.outcome_lines(tally_of(1000, [], [], ["o-1"]), "group:all", 7, 10)
    assert done == [
        "1000 of 1001 node(s) of group:all applied generation 7",
        "  offline, applies 7 when it connects (1): o-1",
    ], "an offline node is named, and is no failure"
    assert applied.named(["a", "b"], 2) == "a, b" and applied.named(["a", "b", "c"], 2) == "a, b and 1 more"


def test_tally_sorts_the_status_rows_of_a_target_by_outcome() -> None:
    rows = [
        {"node_id": "b", "state": "online", "generations": {"group:g": 2}, "drift": []},
        {"node_id": "a", "state": "online", "generations": {"group:g": 1}, "drift": ["error: no room"]},
        {"node_id": "c", "state": "online", "generations": {}, "drift": ["template t: missing"]},
        {"node_id": "d", "state": "failed", "generations": {}, "drift": []},
        {"node_id": "e", "state": "online", "generations": {"group:g": 3}, "drift": []},
    ]
    t = applied.tally(rows, "group:g", 2)
    assert t.applied == ["b", "e"] and t.pending == ["c"] and t.failed == [("a", "no room")]
    assert t.offline == ["d"] and t.total == 5 and t.missing == 2
