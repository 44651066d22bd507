"""The broker's ACL for site agents, generated from proto/access.py: a real Mosquitto with the
mutual-TLS configuration and ACL `broker-config` writes, real paho clients with site certificates.

A node writes its own agent run reports and the site's actuator topics (`--actuator-topic`,
default `actions/#`), reads the decisions on its own runs only, and writes no decision; an
actuator (a sensor identity) hears the actions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.security.tls_support import Client, TlsBroker, pki_cli

T = Topics.for_site("lab")
NOT_AUTHORIZED = "Not authorized"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    tmp = tmp_path_factory.mktemp("agent-acl")
    broker = TlsBroker(tmp)
    clients: dict[str, Client] = {}
    try:
        bundles = {
            "n1": broker.enroll("node", "n1"),
            "n2": broker.enroll("node", "n2"),
            "valve": broker.enroll("sensor", "valve"),
        }
        # the site's actuators listen under two filters of its own choosing
        pki_cli(broker.pki.dir, "broker-config", "--actuator-topic", "actions/#", "--actuator-topic", "plant/cmd/#")
        broker.settle()
        bundles["orchestrator"] = broker.pki.bundle_dir("orchestrator")
        for name, bundle in bundles.items():
            c = Client(broker, bundle, f"{name}-{time.monotonic_ns()}")
            assert c.connected, (name, c.error, c.connect_reason)
            clients[name] = c
        clients["orchestrator"].subscribe(f"{T.root}#")
        clients["valve"].subscribe("actions/#")
        clients["valve"].subscribe("plant/cmd/#")
        yield clients
    finally:
        for c in clients.values():
            c.close()
        broker.stop()


def test_a_node_reports_its_runs_and_acts_on_the_actuator_topics(site: dict[str, Client]) -> None:
    n1, orch, valve = site["n1"], site["orchestrator"], site["valve"]
    report = f"report {time.monotonic_ns()}".encode()
    assert not n1.publish(T.agent_runs("n1"), report).is_failure
    assert wait_for(lambda: orch.got(T.agent_runs("n1"), report), timeout=5)
    for topic in ("actions/tickets/m7", "plant/cmd/valve/3"):
        action = f"action {time.monotonic_ns()}".encode()
        assert not n1.publish(topic, action).is_failure, topic
        assert wait_for(lambda t=topic, a=action: valve.got(t, a), timeout=5), topic


@pytest.mark.parametrize(
    "topic",
    [
        T.agent_runs("n2"),  # another node's runs
        T.agent_decisions("n1", "run-0001"),  # only the orchestrator decides
        "plant/valves/3",  # not an actuator topic of this site
        "sensors/m7/temperature",  # a node does not forge sensor readings
    ],
)
def test_a_node_may_not_write_elsewhere(site: dict[str, Client], topic: str) -> None:
    payload = f"forged {time.monotonic_ns()}".encode()
    assert str(site["n1"].publish(topic, payload)) == NOT_AUTHORIZED, topic


def test_a_node_reads_the_decisions_on_its_own_runs_only(site: dict[str, Client]) -> None:
    n1, n2, orch = site["n1"], site["n2"], site["orchestrator"]
    n1.subscribe(T.node_agent_decisions("n1"))
    n1.subscribe(f"{T.root}agents/decisions/#")  # granted, but the broker delivers only its own
    mine, theirs = b"decision for n1", b"decision for n2"
    assert not orch.publish(T.agent_decisions("n1", "run-0001"), mine, retain=True).is_failure
    assert not orch.publish(T.agent_decisions("n2", "run-0002"), theirs, retain=True).is_failure
    assert wait_for(lambda: n1.got(T.agent_decisions("n1", "run-0001"), mine), timeout=5)
    n2.subscribe(T.node_agent_decisions("n2"))
    assert wait_for(lambda: n2.got(T.agent_decisions("n2", "run-0002"), theirs), timeout=5)
    n1.receive_marker(orch, T.agent_decisions("n1", "marker-0001"))
    assert not n1.got(T.agent_decisions("n2", "run-0002"))
