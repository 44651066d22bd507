"""Site tools, agent rules and agent runs through a real orchestrator, on a real broker.

A real Mosquitto (TLS), a real orchestrator process requiring signed commands from the operators
of a PKI of this module's own (alice: operator, vera: viewer), and a node that is a plain MQTT
client showing its own node certificate: it publishes `AgentRunReport`s on its `agents/runs/<node>`
topic exactly as the node's agent loop does. Tools and rules land in signed desired state; invalid
specs are refused naming the field; runs show in `agent-runs`, `agent-run` and `approvals`; an
approval is published retained, signed with the site key, naming the operator, and cleared when
the run ended; a viewer may not approve, and nobody may decide for a run that ended or expired.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.site.pki import SitePki
from edgefleet.plumbing.site_tls import client_ssl_context
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.agent_runs import AgentRunReport, AgentStep, ApprovalDecision, ApprovalRequest
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult, DesiredState
from edgefleet.proto.signing import KeyRing, load_public_keys, sign_command
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher
from tests.orchestrator.command_client import CommandClient
from tests.proto.test_agents_contract import ACT_TOOL, READ_TOOL, RULE, with_

T = Topics.for_site("lab")
NODE = "agent-n1"


class NodeClient:
    """A plain paho client with a node's own certificate (as the node's control link connects)."""

    def __init__(self, broker: Mosquitto, node_id: str) -> None:
        env = site_identity.site().node_env(node_id)
        files = TlsFiles(
            Path(env["EDGEFLEET_MQTT_CERT_FILE"]),
            Path(env["EDGEFLEET_MQTT_KEY_FILE"]),
            Path(env["EDGEFLEET_MQTT_CA_FILE"]),
        )
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{node_id}-agents", protocol=mqtt.MQTTv5)
        self.client.tls_set_context(client_ssl_context(files))
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert connected.wait(10), "the node could not connect"

    def report(self, report: AgentRunReport, topic_node: str | None = None) -> None:
        topic = T.agent_runs(topic_node or report.node_id)
        self.client.publish(topic, report.dumps(), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("agents")
    pki = SitePki(tmp / "pki")
    pki.init("lab", ["localhost"])
    pki.issue("alice", "operator", role="operator")
    pki.issue("vera", "operator", role="viewer")
    broker = Mosquitto(tmp)
    status = Watcher(broker, T.orchestrator_status())
    env = {"EDGEFLEET_REQUIRE_SIGNED_COMMANDS": "1", "EDGEFLEET_OPERATOR_KEYS": str(pki.dir)}
    orch = Orchestrator(tmp, broker, env=env)
    client = CommandClient(broker, sign=False)
    node = NodeClient(broker, NODE)
    try:
        assert wait_for(lambda: any(m.get("state") == "online" for m in status.json()), timeout=30), (
            orch.log_path.read_text()[-3000:]
        )
        yield {"pki": pki, "broker": broker, "orch": orch, "client": client, "node": node}
    finally:
        node.close()
        client.close()
        status.close()
        orch.stop()
        broker.stop()


def call(site: dict[str, Any], op: str, who: str = "alice", **fields: Any) -> CommandResult:
    pki: SitePki = site["pki"]
    from edgefleet.proto.signing import load_operator_key

    cmd = sign_command(Command(op=op, **fields), "lab", who, load_operator_key(pki.bundle_dir(who) / "client.key"))
    return site["client"].call(cmd.dumps(), timeout=15)


def raw(site: dict[str, Any], payload: dict[str, Any]) -> CommandResult:
    """A command as a client puts it on the wire, unvalidated (it never reaches the signature check)."""
    return site["client"].call(json.dumps({"v": 1, **payload}).encode(), timeout=15)


def site_ring() -> KeyRing:
    return KeyRing(load_public_keys([site_identity.site().site_pub]))


def retained(broker: Mosquitto, topic: str, timeout: float = 10) -> bytes | None:
    """What the broker holds retained on `topic` (a new subscriber's first message), or None."""
    w = Watcher(broker, topic)
    try:
        wait_for(lambda: bool(w.messages), timeout=2)
        return w.messages[0][1] if w.messages else None
    finally:
        w.close()


def push_catalogue(site: dict[str, Any]) -> None:
    for tool in (READ_TOOL, ACT_TOOL):
        r = call(site, "set-tool", target="group:line", tool=tool)
        assert r.ok, r
    r = call(site, "set-agent", target="group:line", agent=RULE)
    assert r.ok, r


def test_tools_and_agent_rules_land_in_signed_desired_state(site: dict[str, Any]) -> None:
    push_catalogue(site)
    payload = retained(site["broker"], T.desired_group("line"))
    assert payload, "no desired state retained for group:line"
    doc = DesiredState.model_validate_json(payload)
    site_ring().verify(doc)  # signed with the site key
    assert set(doc.tools) == {"read_temperature", "open_ticket"} and set(doc.agents) == {"overheat"}
    assert doc.agents["overheat"].limits.act["open_ticket"].calls_per_hour == 2
    listed = call(site, "tools", who="vera", target="group:line")
    assert listed.ok and set(listed.data["targets"]["group:line"]) == {"read_temperature", "open_ticket"}, listed
    agents = call(site, "agents", who="vera")
    assert agents.ok and agents.data["targets"]["group:line"]["overheat"]["tools"] == RULE["tools"], agents


def test_invalid_specs_are_refused_naming_the_field(site: dict[str, Any]) -> None:
    r = raw(site, {"op": "set-tool", "target": "group:line", "tool": with_(ACT_TOOL, "kind", "read")})
    assert not r.ok and r.code == "invalid_payload" and r.field == "tool", r
    assert "kind must be 'act'" in r.message
    r = raw(site, {"op": "set-agent", "target": "group:line", "agent": with_(RULE, "limits.max_steps", 0)})
    assert not r.ok and r.field == "agent.limits.max_steps" and "max_steps" in r.message, r
    # valid alone, refused against the catalogue: a tool the target does not have
    r = call(site, "set-agent", target="group:line", agent=with_(RULE, "tools", [*RULE["tools"], "stop_line"]))
    assert not r.ok and r.field == "agent.tools", r
    assert "tool 'stop_line' is not in the catalogue" in r.message and "group line" in r.message
    # an act tool publishing where the broker lets no node write
    r = call(site, "set-tool", target="group:line", tool=with_(ACT_TOOL, "binding.topic", "plant/valves/{machine}"))
    assert not r.ok and r.field == "tool.binding.topic" and "outside the site's actuator topics" in r.message, r
    # a tool a rule uses cannot go, nor turn from act into read under the rule's act limits
    r = call(site, "rm-tool", target="group:line", name="open_ticket")
    assert not r.ok and r.field == "name" and "agent rule overheat: tool 'open_ticket'" in r.message, r
    as_read = {**READ_TOOL, "name": "open_ticket", "version": "2"}
    r = call(site, "set-tool", target="group:line", tool=as_read)
    assert not r.ok and r.field == "tool.kind" and "limits.act names 'open_ticket', a read tool" in r.message, r
    r = call(site, "rm-tool", target="group:line", name="no_such_tool")
    assert not r.ok and r.field == "name" and "is not desired for group:line" in r.message, r
    # and a viewer changes nothing
    r = call(site, "set-tool", who="vera", target="group:line", tool=READ_TOOL)
    assert not r.ok and r.code == "permission_denied" and "vera" in r.message and "set-tool" in r.message, r


def waiting_report(run_id: str, step: int = 2, expires_in: float = 600) -> AgentRunReport:
    pending = ApprovalRequest(
        run_id=run_id,
        step=step,
        tool="open_ticket",
        arguments='{"machine": "m7", "priority": 9}',
        why="priority 9 is above its maximum 3",
        expires_at=time.time() + expires_in,
    )
    steps = [
        AgentStep(index=0, kind="model", detail="reading the temperature"),
        AgentStep(index=1, kind="tool", tool="read_temperature", arguments='{"machine": "m7"}', verdict="ran"),
        AgentStep(index=step, kind="tool", tool="open_ticket", arguments=pending.arguments, verdict="waiting"),
    ]
    return AgentRunReport(
        node_id=NODE,
        run_id=run_id,
        rule="overheat",
        rule_version="1",
        trigger="sensors/m7/vibration",
        state="waiting",
        reason="waiting for approval",
        steps=steps,
        pending=pending,
    )


def listed(site: dict[str, Any], run_id: str, state: str) -> bool:
    r = call(site, "agent-runs", who="vera", node=NODE)
    return r.ok and any(x["run_id"] == run_id and x["state"] == state for x in r.data["runs"])


def test_a_reported_run_shows_and_its_approval_is_signed_retained_and_cleared(site: dict[str, Any]) -> None:
    node: NodeClient = site["node"]
    run_id = "run-approve-0001"
    report = waiting_report(run_id)
    node.report(report)
    assert wait_for(lambda: listed(site, run_id, "waiting"), timeout=10)
    one = call(site, "agent-run", who="vera", run_id=run_id)
    assert one.ok and len(one.data["run"]["steps"]) == 3 and one.data["decisions"] == {}, one
    queue = call(site, "approvals", who="vera")
    mine = [a for a in queue.data["approvals"] if a["run_id"] == run_id]
    assert mine and mine[0]["step"] == 2 and mine[0]["node_id"] == NODE and mine[0]["tool"] == "open_ticket", queue

    # a viewer may not approve: the refusal names who and what
    r = call(site, "approve", who="vera", node=NODE, run_id=run_id, step=2)
    assert not r.ok and r.code == "permission_denied", r
    assert "'vera'" in r.message and "approve" in r.message and "role operator" in r.message
    # the wrong step is refused, naming the one waiting
    r = call(site, "approve", node=NODE, run_id=run_id, step=5)
    assert not r.ok and r.field == "step" and "waits at step 2 (open_ticket)" in r.message, r

    decisions = Watcher(site["broker"], T.agent_decisions(NODE, run_id))
    try:
        r = call(site, "approve", node=NODE, run_id=run_id, step=2, reason="checked on the floor")
        assert r.ok and "alice" in r.message, r
        assert wait_for(lambda: bool(decisions.on(T.agent_decisions(NODE, run_id))), timeout=10)
        d = ApprovalDecision.model_validate(decisions.on(T.agent_decisions(NODE, run_id))[0])
        site_ring().verify(d)
        assert (d.operator, d.approve, d.step, d.node_id, d.reason) == ("alice", True, 2, NODE, "checked on the floor")
        assert retained(site["broker"], T.agent_decisions(NODE, run_id)) == d.dumps()  # retained for the node

        again = call(site, "deny", node=NODE, run_id=run_id, step=2)
        assert not again.ok and "already approved by alice" in again.message, again
        queue = call(site, "approvals", who="vera")
        assert all(a["run_id"] != run_id for a in queue.data["approvals"]), queue

        # the node executes and ends the run: the retained decision is cleared
        done = report.model_copy(
            update={
                "state": "done",
                "reason": "answered",
                "answer": "ticket opened",
                "pending": None,
                "ended": time.time(),
                "ts": time.time() + 0.01,
                "steps": [*report.steps[:2], report.steps[2].model_copy(update={"verdict": "approved"})],
            }
        )
        node.report(done)
        cleared = lambda: any(t == T.agent_decisions(NODE, run_id) and not p for t, p in decisions.messages)  # noqa: E731
        assert wait_for(cleared, timeout=10), decisions.messages
    finally:
        decisions.close()
    assert retained(site["broker"], T.agent_decisions(NODE, run_id)) is None
    assert wait_for(lambda: listed(site, run_id, "done"), timeout=10)
    shown = call(site, "agent-run", who="vera", run_id=run_id, node=NODE)
    assert shown.data["run"]["answer"] == "ticket opened" and shown.data["decisions"]["2"]["operator"] == "alice"

    # a decision for a run that ended is refused
    r = call(site, "deny", node=NODE, run_id=run_id, step=2)
    assert not r.ok and r.field == "run_id" and "has ended (done: answered)" in r.message, r


def test_no_decision_for_an_expired_or_unknown_run(site: dict[str, Any]) -> None:
    node: NodeClient = site["node"]
    run_id = "run-expired-0001"
    node.report(waiting_report(run_id, expires_in=-5))
    assert wait_for(lambda: listed(site, run_id, "waiting"), timeout=10)
    queue = call(site, "approvals", who="vera")
    assert all(a["run_id"] != run_id for a in queue.data["approvals"]), "an expired call is not in the queue"
    r = call(site, "approve", node=NODE, run_id=run_id, step=2)
    assert not r.ok and r.field == "step" and "expired" in r.message, r
    r = call(site, "approve", node=NODE, run_id="run-never-0001", step=2)
    assert not r.ok and r.code == "not_found" and r.field == "run_id" and "run-never-0001" in r.message, r


def test_a_node_may_not_report_for_another(site: dict[str, Any]) -> None:
    node: NodeClient = site["node"]
    errors = Watcher(site["broker"], T.errors("orchestrator"))
    try:
        forged = waiting_report("run-forged-0001").model_copy(update={"node_id": "agent-n2"})
        node.report(forged, topic_node=NODE)
        assert wait_for(lambda: any("agent-n2" in e.get("message", "") for e in errors.json()), timeout=10)
    finally:
        errors.close()
    r = call(site, "agent-runs", who="vera")
    assert all(x["run_id"] != "run-forged-0001" for x in r.data["runs"]), r


def test_runs_page_newest_first_and_filter(site: dict[str, Any]) -> None:
    node: NodeClient = site["node"]
    base = time.time()
    for i in range(3):
        rep = waiting_report(f"run-page-000{i}").model_copy(
            update={"rule": "paging", "state": "running", "pending": None, "started": base + i, "ts": base + i}
        )
        node.report(rep)
    assert wait_for(lambda: call(site, "agent-runs", who="vera", rule="paging").data["total"] == 3, timeout=10)
    first = call(site, "agent-runs", who="vera", rule="paging", limit=2)
    assert [x["run_id"] for x in first.data["runs"]] == ["run-page-0002", "run-page-0001"], first
    assert first.data["next_offset"] == 2 and first.data["runs"][0]["step_count"] == 3
    second = call(site, "agent-runs", who="vera", rule="paging", limit=2, offset=2)
    assert [x["run_id"] for x in second.data["runs"]] == ["run-page-0000"] and second.data["next_offset"] is None
    assert call(site, "agent-runs", who="vera", rule="paging", state="done").data["total"] == 0


def test_a_decision_names_the_console_account_the_operator_acts_for(site: dict[str, Any]) -> None:
    node: NodeClient = site["node"]
    run_id = "run-console-0001"
    node.report(waiting_report(run_id))
    assert wait_for(lambda: listed(site, run_id, "waiting"), timeout=10)
    r = call(site, "deny", node=NODE, run_id=run_id, step=2, on_behalf_of="bob", reason="not now")
    assert r.ok and "bob via alice" in r.message, r
    d = ApprovalDecision.model_validate(r.data["decision"])
    site_ring().verify(d)
    assert (d.operator, d.approve, d.reason) == ("bob via alice", False, "not now")
