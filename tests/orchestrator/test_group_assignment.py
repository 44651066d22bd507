"""Groups at run time, end to end: a real Mosquitto, a real orchestrator, one real node process.

The node starts in group `ga` (EDGEFLEET_GROUPS); `fleet assign-groups` adds `gb` and takes it
away again, without a restart. The tests share the node (a start costs a model load); each leaves
its groups as it found them, so they run in any order.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import GroupAssignment
from edgefleet.proto.signing import sign_assignment
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import NodeProcess, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet, fleet_status, node_env
from tests.orchestrator.command_client import CommandClient

NODE = "kappa"
TOPICS = Topics.for_site("lab")


@pytest.fixture(scope="module")
def nodes(broker: Mosquitto, orchestrator: Orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """{"node": the running NodeProcess} (a test that restarts it puts the new one in)."""
    n = NodeProcess(tmp_path_factory.mktemp("node"), env=node_env(broker, EDGEFLEET_GROUPS="ga"), node_id=NODE)
    held = {"node": n}
    try:
        n.wait_serving()
        yield held
    finally:
        held["node"].stop()


def has_template(node: NodeProcess, name: str) -> bool:
    try:
        list(node.stub.Generate(pb.GenerateRequest(template=name, max_tokens=1), timeout=10))
    except grpc.RpcError as e:
        return e.code() != grpc.StatusCode.NOT_FOUND
    return True


def push(broker: Mosquitto, tmp: Path, target: str, name: str) -> None:
    f = tmp / f"{name}.j2"
    f.write_text(f"Say {name}.")
    r = fleet(broker, "fleet", "push-template", str(f), "--name", name, "--version", "1", "--target", target)
    assert r.returncode == 0, r.stderr


def row(broker: Mosquitto) -> dict:
    return fleet_status(broker).get(NODE, {})


def assign(broker: Mosquitto, groups: str, *extra: str) -> str:
    r = fleet(broker, "fleet", "assign-groups", NODE, "--groups", groups, *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_an_assigned_group_applies_without_a_restart_survives_restarts_and_is_taken_away(
    broker: Mosquitto, orchestrator: Orchestrator, nodes: dict, tmp_path: Path
) -> None:
    n = nodes["node"]
    assert wait_for(lambda: row(broker).get("state") == "online", timeout=15)
    push(broker, tmp_path, "group:ga", "ga-tmpl")
    push(broker, tmp_path, "group:gb", "gb-tmpl")
    assert wait_for(lambda: has_template(n, "ga-tmpl"), timeout=10)
    assert not has_template(n, "gb-tmpl")
    pid = n.proc.pid
    pki = tmp_path / "pki"  # a copy of the site PKI, where the node is enrolled
    shutil.copytree(site_identity.site().pki.dir, pki)
    out = assign(broker, "gb", "--dir", str(pki))
    assert "assigned groups gb (generation 1)" in out and "applied generation 1" in out, out
    assert wait_for(lambda: has_template(n, "gb-tmpl"), timeout=10)
    assert n.proc.pid == pid and n.proc.poll() is None, "no restart"
    r = row(broker)
    assert {"ga", "gb"} <= set(r["groups"]) and r["assigned_groups"] == ["gb"], r
    assert wait_for(lambda: row(broker).get("sync") == "in sync", timeout=10), row(broker)
    ident = json.loads((pki / "public" / "identities.json").read_text())["identities"][NODE]
    assert ident["assigned_groups"] == ["gb"]
    acl = (pki / "broker" / "acl").read_text().split(f"user {NODE}\n")[1].split("\n\n")[0]
    assert "topic read edgefleet/lab/desired/group/gb" in acl and "topic read edgefleet/lab/group/gb/requests" in acl
    assert f"topic read edgefleet/lab/assign/node/{NODE}" in acl and "topic write edgefleet/lab/assign" not in acl
    table = fleet(broker, "fleet", "status").stdout
    assert "ga" in table and "gb" in table

    # the assignment survives node and orchestrator restarts, then is taken away
    old = nodes["node"]
    assert old.stop() == 0
    n = nodes["node"] = old.restarted()
    n.wait_serving()
    assert has_template(n, "gb-tmpl"), "served from node.db before the broker answers"
    assert wait_for(lambda: row(broker).get("state") == "online", timeout=15)
    orchestrator.stop()
    orchestrator.start()
    assert wait_for(lambda: row(broker).get("assigned_groups") == ["gb"], timeout=15), row(broker)
    assert "gb" in row(broker)["groups"]
    out = assign(broker, "", "--dir", str(tmp_path / "no-pki"))
    assert "generation 2" in out and "broker ACL" in out and "--acl-only" in out, out
    assert wait_for(lambda: not has_template(n, "gb-tmpl"), timeout=10)
    assert has_template(n, "ga-tmpl")
    r = row(broker)
    assert "gb" not in r["groups"] and r["assigned_groups"] == [] and "ga" in r["groups"], r


def test_a_forged_or_unsigned_assignment_is_refused_with_an_error_report(broker: Mosquitto, nodes: dict) -> None:
    n = nodes["node"]
    assert wait_for(lambda: row(broker).get("state") == "online", timeout=15)
    groups = row(broker)["groups"]
    errors = Watcher(broker, TOPICS.errors(NODE))
    try:
        forged = GroupAssignment(site="lab", node_id=NODE, groups=["evil"], generation=50)
        errors.publish(TOPICS.node_assignment(NODE), forged.dumps())  # unsigned
        other_key = sign_assignment(forged, Ed25519PrivateKey.generate())
        errors.publish(TOPICS.node_assignment(NODE), other_key.dumps())
        genuine = sign_assignment(forged, SiteKey.load(site_identity.site().site_key).private)
        altered = genuine.model_copy(update={"groups": ["evil", "worse"]})
        errors.publish(TOPICS.node_assignment(NODE), altered.dumps())

        def codes() -> list[str]:
            return [e["code"] for e in errors.on(TOPICS.errors(NODE)) if "group assignment" in e["message"]]

        assert wait_for(
            lambda: codes() == [ErrorCode.UNSIGNED, ErrorCode.BAD_SIGNATURE, ErrorCode.BAD_SIGNATURE], timeout=10
        ), codes()
    finally:
        errors.close()
    assert row(broker)["groups"] == groups and n.proc.poll() is None  # nothing of it was applied


def test_bad_input_is_refused_with_a_clear_error(broker: Mosquitto, nodes: dict) -> None:
    r = fleet(broker, "fleet", "assign-groups", "nobody", "--groups", "gb", "--dir", "/nonexistent")
    assert r.returncode != 0 and "no node 'nobody' has registered" in r.stderr, r.stderr
    r = fleet(broker, "fleet", "assign-groups", NODE, "--groups", "ok,a/b")
    assert r.returncode != 0 and "group name 'a/b' is invalid" in r.stderr, r.stderr
    client = CommandClient(broker)
    try:
        # what edgefleet's `Command` refuses to build, as another client could send it
        result = client.call(json.dumps({"v": 1, "op": "assign-groups", "target": NODE, "groups": ["../x"]}).encode())
        assert not result.ok and result.code == ErrorCode.INVALID_PAYLOAD and "invalid" in result.message
        result = client.call(json.dumps({"v": 1, "op": "assign-groups", "target": NODE}).encode())
        assert not result.ok and "groups" in result.message
    finally:
        client.close()
