"""The attacker matrix at the broker: a real Mosquitto with the generated mutual-TLS config and
ACL, real paho clients with certificates from the site PKI.

A refused publish is answered with PUBACK reason "Not authorized" (MQTT 5, QoS 1) and never
reaches a subscriber holding the orchestrator identity.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet.site.pki import SitePki
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.security.tls_support import Client, TlsBroker, pki_cli

T = Topics.for_site("lab")
NOT_AUTHORIZED = "Not authorized"
MARKERS = f"{T.root}test/markers"  # the orchestrator identity reads and writes the whole root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("acl")
    broker = TlsBroker(tmp)
    clients: list[Client] = []
    try:
        bundles = {
            "n1": broker.enroll("node", "n1", "--groups", "g1"),
            "n2": broker.enroll("node", "n2"),
            "s1": broker.enroll("sensor", "s1"),
            "op": broker.enroll("operator", "op"),
        }
        broker.settle()
        bundles["orchestrator"] = broker.pki.bundle_dir("orchestrator")
        orch = Client(broker, bundles["orchestrator"], "orchestrator-lab")
        clients.append(orch)
        assert orch.connected, (orch.error, orch.connect_reason, broker.log_path.read_text()[-2000:])
        orch.subscribe(f"{T.root}#")
        yield {"broker": broker, "bundles": bundles, "orch": orch, "clients": clients, "tmp": tmp}
    finally:
        for c in clients:
            c.close()
        broker.stop()


def connect(site: dict[str, object], name: str, client_id: str | None = None) -> Client:
    bundles = site["bundles"]
    assert isinstance(bundles, dict)
    c = Client(site["broker"], bundles[name], client_id or f"{name}-{time.monotonic_ns()}")  # type: ignore[arg-type]
    site["clients"].append(c)  # type: ignore[attr-defined]
    assert c.connected, (c.error, c.connect_reason)
    return c


def refused_and_not_delivered(site: dict[str, object], who: str, topic: str) -> None:
    c = connect(site, who)
    payload = f"forged by {who} {time.monotonic_ns()}".encode()
    reason = c.publish(topic, payload)
    assert str(reason) == NOT_AUTHORIZED, f"{who} -> {topic}: {reason}"
    orch = site["orch"]
    assert isinstance(orch, Client)
    orch.receive_marker(orch, MARKERS)  # published after the refusal's PUBACK: the broker was done with it
    assert not orch.got(topic, payload)


@pytest.mark.parametrize(
    "who, topic",
    [
        ("n1", T.desired_node("n1")),  # a node cannot write its own desired state
        ("n1", T.desired_group("g1")),
        ("n1", T.node_status("n2")),  # … nor speak for another node
        ("n1", T.results("n2")),
        ("n1", T.artifact_chunk_requests("n2")),  # … nor ask for chunks in its name
        ("n1", f"{T.root}artifact/requests"),  # the shared request topic of before
        ("n1", T.orchestrator_commands()),  # … nor command the orchestrator
        ("n1", T.artifact_manifest(T.artifact_scope("group", "g1"), "adapter", "a")),
        ("n1", T.artifact_chunk(T.artifact_scope("node", "n1"), "adapter", "a", "1", 0)),
        ("n1", T.orchestrator_status()),
        ("n1", T.node_assignment("n1")),  # only the orchestrator assigns groups
        ("op", T.node_assignment("n1")),
        ("s1", T.desired_node("n1")),
        ("s1", T.node_status("n1")),
        ("s1", T.orchestrator_commands()),
        ("op", T.desired_node("n1")),  # operators go through the orchestrator's commands
        ("op", T.node_status("n1")),
    ],
)
def test_forbidden_publish_is_refused(site: dict[str, object], who: str, topic: str) -> None:
    refused_and_not_delivered(site, who, topic)


def test_node_publishes_its_own_status(site: dict[str, object]) -> None:
    n1 = connect(site, "n1", "node-lab-n1")
    orch = site["orch"]
    assert isinstance(orch, Client)
    for topic in (T.node_status("n1"), T.node_telemetry("n1"), T.results("n1"), T.artifact_chunk_requests("n1")):
        payload = f"ok {time.monotonic_ns()}".encode()
        assert n1.publish(topic, payload).is_failure is False
        assert wait_for(lambda t=topic, p=payload: orch.got(t, p), timeout=5)


def test_node_reads_its_own_desired_state_only(site: dict[str, object]) -> None:
    orch = site["orch"]
    assert isinstance(orch, Client)
    assert not orch.publish(T.desired_node("n1"), b"for n1", retain=True).is_failure  # the orchestrator may
    assert not orch.publish(T.desired_group("g1"), b"for g1", retain=True).is_failure
    assert not orch.publish(T.desired_node("n2"), b"for n2", retain=True).is_failure
    n1, n2 = connect(site, "n1"), connect(site, "n2")
    n1.subscribe(f"{T.root}#")  # granted, but the broker delivers only what the ACL lets it read
    n2.subscribe(T.desired_group("g1"))
    n2.subscribe(T.node_requests("n2"))  # where its marker comes
    n1.subscribe("$share/g1/" + T.group_requests("g1"))
    op = connect(site, "op")
    assert not op.publish(T.group_requests("g1"), b"question").is_failure
    assert wait_for(lambda: n1.got(T.desired_node("n1"), b"for n1") and n1.got(T.desired_group("g1")), timeout=5)
    assert wait_for(lambda: n1.got(T.group_requests("g1"), b"question"), timeout=5)
    n1.receive_marker(orch, T.node_requests("n1"))  # after the retained messages of its subscriptions
    n2.receive_marker(orch, T.node_requests("n2"))
    assert not n1.got(T.desired_node("n2"))
    assert not n2.got(T.desired_group("g1"))  # not in that group
    assert not any(t.startswith(T.root + "orchestrator") or "/n2/" in t for t, _ in n1.messages)


def test_sensor_cannot_read_results_or_desired_state(site: dict[str, object]) -> None:
    orch = site["orch"]
    assert isinstance(orch, Client)
    op = connect(site, "op")
    op.subscribe("plant/#")
    s1 = connect(site, "s1")
    s1.subscribe(f"{T.root}#")
    s1.subscribe(T.results("+"))
    assert not orch.publish(T.desired_node("n2"), b"secret desired", retain=True).is_failure
    assert not orch.publish(T.results("n1"), b"secret result").is_failure
    # Its own job works. A sensor reads nothing, so no marker can reach it; the PUBACK of this publish
    # is its marker: Mosquitto writes to one connection in order, so a message routed to s1 before the
    # broker took this publish would have reached s1 before this PUBACK (publish() waits for it).
    assert not s1.publish("plant/line1/reading", b'{"v": 1}').is_failure
    assert wait_for(lambda: op.got("plant/line1/reading"), timeout=5)  # operators (console) read sensors
    assert s1.messages == []


def test_client_without_certificate_cannot_connect(site: dict[str, object]) -> None:
    c = Client(site["broker"], None, "nocert")  # type: ignore[arg-type]
    site["clients"].append(c)  # type: ignore[attr-defined]
    assert not c.connected


def test_certificate_of_a_foreign_ca_cannot_connect(site: dict[str, object]) -> None:
    tmp = site["tmp"]
    assert isinstance(tmp, Path)
    foreign = SitePki(tmp / "foreign-pki")
    foreign.init("lab", [])
    foreign.issue("n1", "node")  # same name, other CA
    broker = site["broker"]
    assert isinstance(broker, TlsBroker)
    c = Client(broker, foreign.bundle_dir("n1"), "node-lab-n1", ca=broker.pki.ca_cert_path)
    site["clients"].append(c)  # type: ignore[attr-defined]
    assert not c.connected


def test_revoked_node_cannot_reconnect_and_loses_rights_at_once(site: dict[str, object]) -> None:
    broker = site["broker"]
    assert isinstance(broker, TlsBroker)
    orch = site["orch"]
    assert isinstance(orch, Client)
    broker.enroll("node", "n3")
    broker.settle()
    bundles = site["bundles"]
    assert isinstance(bundles, dict)
    bundles["n3"] = broker.pki.bundle_dir("n3")
    n3, n2 = connect(site, "n3"), connect(site, "n2")
    assert not n3.publish(T.node_status("n3"), b"before").is_failure
    before = broker.reloads()
    broker.revoke("n3")  # the verb itself sends the SIGHUP
    assert wait_for(lambda: broker.reloads() > before, timeout=5), "revoke did not make the broker reload"
    assert str(n3.publish(T.node_status("n3"), b"after")) == NOT_AUTHORIZED  # the open connection too
    orch.receive_marker(orch, MARKERS)
    assert not orch.got(T.node_status("n3"), b"after")
    again = Client(broker, bundles["n3"], "n3-again")
    site["clients"].append(again)  # type: ignore[attr-defined]
    assert not again.connected
    assert n2.client.is_connected() and orch.client.is_connected()  # nobody else was dropped
    assert not n2.publish(T.node_status("n2"), b"still here").is_failure
    assert wait_for(lambda: orch.got(T.node_status("n2"), b"still here"), timeout=5)
    assert broker.pki.get("n3").revoked  # type: ignore[union-attr]


def test_a_node_reads_its_own_assignment_and_its_assigned_groups_once_the_acl_is_regenerated(
    site: dict[str, object],
) -> None:
    """A node of its own (n4): the other tests' n2 stays out of g1, whatever order they run in."""
    broker, orch, bundles = site["broker"], site["orch"], site["bundles"]
    assert isinstance(broker, TlsBroker) and isinstance(orch, Client) and isinstance(bundles, dict)
    bundles["n4"] = broker.enroll("node", "n4")
    broker.settle()
    for node in ("n1", "n4"):
        assert not orch.publish(T.node_assignment(node), f"groups of {node}".encode(), retain=True).is_failure
    assert not orch.publish(T.desired_group("g1"), b"g1 again", retain=True).is_failure
    n4 = connect(site, "n4")
    n4.subscribe(T.node_assignment("+"))
    n4.subscribe(T.desired_group("g1"))
    n4.subscribe(T.node_requests("n4"))
    assert wait_for(lambda: n4.got(T.node_assignment("n4"), b"groups of n4"), timeout=5)
    n4.receive_marker(orch, T.node_requests("n4"))  # after every retained message its subscriptions matched
    assert not n4.got(T.node_assignment("n1")) and not n4.got(T.desired_group("g1"))
    broker.pki.assign_groups("n4", ["g1"])  # what `fleet assign-groups --dir` does, then regenerate
    pki_cli(broker.pki.dir, "broker-config", "--broker-pid", str(broker.proc.pid))
    broker.settle()
    late = connect(site, "n4")
    late.subscribe(T.desired_group("g1"))
    assert wait_for(lambda: late.got(T.desired_group("g1"), b"g1 again"), timeout=5)
