"""`edgefleet fleet tool …` and `edgefleet fleet agent …` end to end: the real CLI (a subprocess,
signing as the harness operator) against a real orchestrator process and broker; the node is a
plain MQTT client with its own certificate publishing its agent run reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.proto.agent_runs import ApprovalDecision
from edgefleet.proto.signing import KeyRing, load_public_keys
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Watcher, fleet
from tests.orchestrator.test_agent_commands import NODE, NodeClient, waiting_report
from tests.proto.test_agents_contract import ACT_TOOL, READ_TOOL, RULE, with_

T = Topics.for_site("lab")


@pytest.fixture(scope="module")
def node(broker: Mosquitto, orchestrator: Any) -> Iterator[NodeClient]:
    status = Watcher(broker, T.orchestrator_status())
    try:
        assert wait_for(lambda: any(m.get("state") == "online" for m in status.json()), timeout=30)
    finally:
        status.close()
    n = NodeClient(broker, NODE)
    yield n
    n.close()


def cli(broker: Mosquitto, *args: str) -> tuple[int, str, str]:
    r = fleet(broker, "--timeout", "15", "fleet", *args)
    return r.returncode, r.stdout, r.stderr


def spec_file(tmp: Path, name: str, data: dict[str, Any]) -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return str(path)


def test_tools_and_agent_rules_from_files(broker: Mosquitto, node: NodeClient, tmp_path: Path) -> None:
    for name, data in (("read.yaml", READ_TOOL), ("act.json", ACT_TOOL)):
        rc, out, err = cli(
            broker, "tool", "set", spec_file(tmp_path, name, data), "--target", "group:line", "--no-wait"
        )
        assert rc == 0 and "published for group:line" in out, (out, err)
    rc, out, err = cli(
        broker, "agent", "set", spec_file(tmp_path, "rule.yaml", RULE), "--target", "group:line", "--no-wait"
    )
    assert rc == 0 and "agent rule overheat@1" in out, (out, err)

    rc, out, _ = cli(broker, "tool", "list")
    assert rc == 0 and "read_temperature@1" in out and "open_ticket@1" in out and "publish actions/tickets" in out, out
    rc, out, _ = cli(broker, "agent", "list", "--json")
    assert rc == 0 and json.loads(out)["group:line"]["overheat"]["tools"] == RULE["tools"], out

    # a bad file is refused before anything is sent, naming the field
    bad = spec_file(tmp_path, "bad.yaml", with_(READ_TOOL, "binding.topic", "sensors/#"))
    rc, out, err = cli(broker, "tool", "set", bad, "--target", "group:line")
    assert rc == 2 and "binding.sensor_latest.topic" in err and "wildcards" in err, (out, err)
    # a rule naming a tool the target lacks is refused by the orchestrator, naming it
    unknown = spec_file(tmp_path, "unknown.yaml", with_(RULE, "tools", [*RULE["tools"], "stop_line"]))
    rc, out, err = cli(broker, "agent", "set", unknown, "--target", "group:line")
    assert rc == 2 and "stop_line" in err and "not in the catalogue" in err, (out, err)

    rc, out, err = cli(broker, "agent", "rm", "overheat", "--target", "group:line", "--no-wait")
    assert rc == 0 and "removed from group:line" in out, (out, err)
    rc, out, err = cli(broker, "tool", "rm", "open_ticket", "--target", "group:line", "--no-wait")
    assert rc == 0, (out, err)
    rc, out, _ = cli(broker, "agent", "list")
    assert rc == 0 and "(no agents)" in out, out


def test_runs_show_approvals_and_approve(broker: Mosquitto, node: NodeClient) -> None:
    run_id = "run-cli-0001"
    node.report(waiting_report(run_id))

    def listed() -> bool:
        rc, out, _ = cli(broker, "agent", "runs", "--node", NODE)
        return rc == 0 and run_id in out

    assert wait_for(listed, timeout=15)
    rc, out, _ = cli(broker, "agent", "runs", "--state", "waiting")
    assert rc == 0 and "waits for approval of step 2: open_ticket" in out, out
    rc, out, _ = cli(broker, "agent", "show", run_id)
    assert rc == 0 and "read_temperature" in out and "waiting: step 2 open_ticket" in out, out
    rc, out, _ = cli(broker, "agent", "approvals")
    assert rc == 0 and run_id in out and "priority 9 is above its maximum 3" in out, out

    decisions = Watcher(broker, T.agent_decisions(NODE, run_id))
    try:
        rc, out, err = cli(broker, "agent", "approve", run_id, "--reason", "looked at it")
        assert rc == 0 and "approved step 2" in out and "as harness" in out, (out, err)
        assert wait_for(lambda: bool(decisions.on(T.agent_decisions(NODE, run_id))), timeout=10)
    finally:
        decisions.close()
    d = ApprovalDecision.model_validate(decisions.on(T.agent_decisions(NODE, run_id))[0])
    KeyRing(load_public_keys([site_identity.site().site_pub])).verify(d)
    assert (d.operator, d.approve, d.reason) == (site_identity.HARNESS, True, "looked at it")

    rc, out, err = cli(broker, "agent", "deny", run_id)
    assert rc == 2 and "waiting on no call" not in err and "already approved by harness" in err, (out, err)
    rc, out, _ = cli(broker, "agent", "show", run_id)
    assert rc == 0 and "decision: step 2 approved by harness (looked at it)" in out, out
    rc, out, _ = cli(broker, "agent", "approvals")
    assert rc == 0 and run_id not in out, out
