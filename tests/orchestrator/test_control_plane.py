"""The control plane end to end: a real Mosquitto, a real orchestrator and real node processes."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet, fleet_status, node_env

TEMPLATE = "Sensor {{ sensor }} reports {{ reading }}. Is this a fault? Answer yes or no."
SYSTEM = "You are a maintenance assistant."


def push(
    broker: Mosquitto, tmp: Path, target: str, name: str = "fault", version: str = "1", body: str = TEMPLATE
) -> None:
    f = tmp / f"{name}-{version}.j2"
    f.write_text(body)
    r = fleet(
        broker,
        "fleet",
        "push-template",
        str(f),
        "--name",
        name,
        "--version",
        version,
        "--target",
        target,
        "--system",
        SYSTEM,
    )
    assert r.returncode == 0, r.stderr


def ask(node: NodeProcess, **variables: str) -> str:
    req = pb.GenerateRequest(template="fault", variables=variables, max_tokens=8, temperature=0)
    return collect(node.stub.Generate(req, timeout=30))[0]


def has_template(node: NodeProcess, name: str = "fault") -> bool:
    try:
        list(node.stub.Generate(pb.GenerateRequest(template=name, max_tokens=1), timeout=10))
    except grpc.RpcError as e:
        return e.code() != grpc.StatusCode.NOT_FOUND  # INVALID_ARGUMENT (missing variables) means it is there
    return True


def in_sync(broker: Mosquitto, *node_ids: str) -> bool:
    rows = fleet_status(broker)
    return all(rows.get(n, {}).get("sync") == "in sync" and rows[n]["state"] == "online" for n in node_ids)


def test_template_reaches_the_target_group_only_and_both_groups_show_in_sync(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    a = start_node("x86-dev", env=node_env(broker), node_id="alpha")
    b = start_node("rpi4-4gb", env=node_env(broker), node_id="beta")
    assert wait_for(lambda: {"alpha", "beta"} <= set(fleet_status(broker)), timeout=15)
    push(broker, tmp_path, "x86-dev")
    assert wait_for(lambda: has_template(a), timeout=10)
    answer = ask(a, sensor="pump-3", reading="7.1 mm/s vibration")
    same = collect(
        a.stub.Generate(
            pb.GenerateRequest(
                messages=[
                    pb.ChatMessage(role="system", content=SYSTEM),
                    pb.ChatMessage(
                        role="user",
                        content=TEMPLATE.replace("{{ sensor }}", "pump-3").replace(
                            "{{ reading }}", "7.1 mm/s vibration"
                        ),
                    ),
                ],
                max_tokens=8,
                temperature=0,
            )
        )
    )[0]
    assert answer == same, "the template renders to the system prompt and user message"
    assert not has_template(b), "beta is in group rpi4-4gb, not x86-dev"
    assert wait_for(lambda: in_sync(broker, "alpha", "beta"), timeout=10)
    rows = fleet_status(broker)
    assert rows["alpha"]["templates"] == {"fault": "1"} and rows["beta"]["templates"] == {}
    table = fleet(broker, "fleet", "status").stdout
    assert "alpha" in table and "beta" in table and "in sync" in table


def test_killed_node_goes_offline_by_its_will_and_comes_back_with_the_same_state(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    n = start_node(env=node_env(broker), node_id="gamma")
    push(broker, tmp_path, "node:gamma", name="gamma-only")
    assert wait_for(lambda: "gamma-only" in fleet_status(broker).get("gamma", {}).get("templates", {}), timeout=10)
    before = fleet_status(broker)["gamma"]
    n.kill()
    assert wait_for(lambda: fleet_status(broker).get("gamma", {}).get("state") == "offline", timeout=10)
    again = start_node(env=node_env(broker), node_id="gamma", port=n.port)
    assert wait_for(lambda: fleet_status(broker).get("gamma", {}).get("state") == "online", timeout=10)
    after = fleet_status(broker)["gamma"]
    assert after["templates"] == before["templates"] and after["sync"] == "in sync"
    assert has_template(again, "gamma-only")


def test_node_down_during_a_push_converges_when_it_returns(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    env = node_env(broker, EDGEFLEET_GROUPS="line-2")
    n = start_node(env=env, node_id="delta")
    assert wait_for(lambda: "delta" in fleet_status(broker), timeout=10)
    assert n.stop() == 0
    assert wait_for(lambda: fleet_status(broker)["delta"]["state"] == "offline", timeout=10)
    push(broker, tmp_path, "group:line-2", name="fault")
    back = start_node(env=env, node_id="delta", port=n.port)
    assert wait_for(lambda: has_template(back), timeout=10), "nothing was re-sent by hand"
    assert wait_for(lambda: in_sync(broker, "delta"), timeout=10)


def test_a_node_converges_after_a_broker_restart(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    n = start_node(env=node_env(broker, EDGEFLEET_GROUPS="line-3"), node_id="epsilon")
    assert wait_for(lambda: "epsilon" in fleet_status(broker), timeout=10)
    broker.restart()
    # The node keeps serving gRPC while the broker is away and reconnects by itself.
    assert collect(n.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2)))[1].finish_reason
    assert wait_for(lambda: fleet_status(broker).get("epsilon", {}).get("state") == "online", timeout=20)
    push(broker, tmp_path, "group:line-3", name="fault", version="2")
    assert wait_for(lambda: has_template(n), timeout=10)
    # Retained desired state survived the restart too: a new member of line-3 gets it.
    late = start_node(env=node_env(broker, EDGEFLEET_GROUPS="line-3"), node_id="zeta")
    assert wait_for(lambda: has_template(late), timeout=10)


def test_orchestrator_restart_keeps_the_registry_and_rebuilds_it_from_retained_messages(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    n = start_node(env=node_env(broker, EDGEFLEET_GROUPS="line-4"), node_id="eta")
    push(broker, tmp_path, "group:line-4", name="fault")
    assert wait_for(lambda: in_sync(broker, "eta"), timeout=15), json.dumps(fleet_status(broker).get("eta"))
    before = fleet_status(broker)["eta"]
    orchestrator.stop()
    orchestrator.start()
    assert wait_for(lambda: fleet_status(broker).get("eta", {}).get("templates") == before["templates"], timeout=15)
    assert has_template(n), "nodes are not disturbed"
    orchestrator.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(str(orchestrator.db) + suffix).unlink(missing_ok=True)
    orchestrator.start()
    assert wait_for(lambda: in_sync(broker, "eta"), timeout=15), "rebuilt from retained status/reported/desired"
    push(broker, tmp_path, "group:line-4", name="fault", version="3")
    assert wait_for(lambda: fleet_status(broker)["eta"]["templates"] == {"fault": "3"}, timeout=10)


BAD_DESIRED = {
    "malformed JSON": b"{not json",
    "wrong payload version": json.dumps({"v": 99}).encode(),
    "oversized": b'{"v": 1, "x": "' + b"a" * 300_000 + b'"}',
    "invalid UTF-8": b"\xff\xfe",
}


def test_bad_input_is_refused_on_the_errors_topic_and_the_node_keeps_serving(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    n = start_node(env=node_env(broker, EDGEFLEET_GROUPS="bad-input"), node_id="theta")
    assert wait_for(lambda: "theta" in fleet_status(broker), timeout=10)
    errors = Watcher(broker, "edgefleet/lab/errors/+")
    try:
        topic = "edgefleet/lab/desired/group/bad-input"
        for payload in BAD_DESIRED.values():
            errors.publish(topic, payload)
        other_site = {"v": 1, "site": "elsewhere", "target": {"kind": "group", "name": "bad-input"}, "generation": 9}
        errors.publish(topic, site_identity.site().signed(other_site))
        sandbox = {
            "v": 1,
            "site": "lab",
            "target": {"kind": "group", "name": "bad-input"},
            "generation": 50,
            "templates": {
                "t": {"name": "t", "version": "1", "template": "{{ x.__class__.__mro__ }}", "variables": ["x"]}
            },
        }
        syntax = {
            **sandbox,
            "generation": 51,
            "templates": {"s": {"name": "s", "version": "1", "template": "{% if %}", "variables": []}},
        }
        errors.publish(topic, site_identity.site().signed(syntax))
        errors.publish(topic, site_identity.site().signed(sandbox))
        assert wait_for(lambda: len([e for e in errors.json() if e["source"] == "theta"]) >= 6, timeout=10), [
            e["message"][:80] for e in errors.json() if e["source"] == "theta"
        ]
        messages = " | ".join(e["message"] for e in errors.json())
        for words in ("not JSON", "version 99", "limit is", "not UTF-8", "site 'elsewhere'", "syntax error"):
            assert words in messages
        # The sandbox escape compiles but can never render: the request gets INVALID_ARGUMENT.
        assert wait_for(lambda: has_template(n, "t"), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            list(n.stub.Generate(pb.GenerateRequest(template="t", variables={"x": "a"}), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unsafe" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(n.stub.Generate(pb.GenerateRequest(template="nope"), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Operator-side refusals: a bad name and a syntax error never reach the broker.
        bad = tmp_path / "bad.j2"
        bad.write_text("{% for %}")
        r = fleet(broker, "fleet", "push-template", str(bad), "--name", "x", "--version", "1", "--target", "g")
        assert r.returncode == 2 and "syntax error" in r.stderr
        r = fleet(broker, "fleet", "push-template", str(bad), "--name", "../etc", "--version", "1", "--target", "g")
        assert r.returncode == 2 and "invalid" in r.stderr
        r = fleet(broker, "fleet", "rm-template", "nope", "--target", "group:bad-input")
        assert r.returncode == 2 and "not desired" in r.stderr
        # The node answers the next good request.
        _, last, _ = collect(n.stub.Generate(pb.GenerateRequest(prompt="hello", max_tokens=2)))
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
    finally:
        errors.close()


def test_older_or_repeated_generation_changes_nothing_and_an_offline_restart_keeps_templates(
    broker: Mosquitto, orchestrator: Orchestrator, start_node, tmp_path: Path
) -> None:
    env = node_env(broker, EDGEFLEET_GROUPS="line-5")
    n = start_node(env=env, node_id="iota")
    push(broker, tmp_path, "group:line-5", name="fault", version="6")
    push(broker, tmp_path, "group:line-5", name="fault", version="7")  # generation 2
    assert wait_for(lambda: fleet_status(broker).get("iota", {}).get("templates", {}).get("fault") == "7", timeout=10)
    watcher = Watcher(broker, "edgefleet/lab/desired/group/line-5")
    try:
        assert wait_for(lambda: bool(watcher.json()), timeout=5), "the retained desired state"
        current = watcher.json()[-1]
        assert current["generation"] == 2
        older = {**current, "generation": 1, "templates": {}}
        watcher.publish("edgefleet/lab/desired/group/line-5", site_identity.site().signed(older))
        watcher.publish("edgefleet/lab/desired/group/line-5", json.dumps(current).encode(), retain=True)
    finally:
        watcher.close()
    # a node that pins the site key (every secure node) refuses the older one as a replay
    assert wait_for(lambda: "a replayed or reused generation" in n.log(), timeout=5)
    ask(n, sensor="p", reading="r")  # still answers with the template after an older and a repeated generation
    assert fleet_status(broker)["iota"]["templates"]["fault"] == "7"
    applied = [line for line in n.log().splitlines() if "desired state applied" in line and "group:line-5" in line]
    assert len(applied) <= 2 and "generation=2" in applied[-1], "the repeated generation was not applied again"

    # Broker down, node restarted: it serves what it last applied, from its own database.
    broker.stop()
    try:
        assert n.stop() == 0
        offline = start_node(env=env, node_id="iota", port=n.port)
        assert has_template(offline), "templates survive a restart with no broker"
        assert ask(offline, sensor="p", reading="r")
    finally:
        broker.start()
