"""`edgefleet fleet balena status`: balena's view (the real balena-sdk against the stand-in of its
API) beside edgefleet's (a real orchestrator on a real TLS broker, fed real retained node status
messages): a device online in balena whose node is offline is flagged, and so is a node no
device of the fleet runs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.proto.payloads import NodeStatus
from edgefleet.proto.topics import Topics
from tests.conftest import BIN, wait_for
from tests.fleet.balena.standin import BalenaStandIn, device
from tests.fleet.balena.test_sync import TOKEN, _command
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet_status

T = Topics.for_site("lab")
APP = 99
DEVICES = {
    APP: [
        device(1, "cam-east", "raspberrypi4-64", {"edgefleet-group": "cams"}, {"EDGEFLEET_NODE_ID": "cam-east"}),
        device(3, "orin-1", "jetson-orin-nano-devkit-nvme", {"edgefleet-node-id": "orin-a"}),
        device(4, "spare", "raspberrypi5"),  # offline in balena (even id), never seen by edgefleet
    ]
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Orchestrator]]:
    tmp = tmp_path_factory.mktemp("balena-status")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    w = Watcher(broker, T.orchestrator_status())
    try:
        # what the nodes would publish: cam-east's last will (offline), orin-a and a node outside balena online
        for node, state in (("cam-east", "offline"), ("orin-a", "online"), ("bench-pc", "online")):
            w.publish(T.node_status(node), NodeStatus(node_id=node, state=state).dumps(), retain=True)
        assert wait_for(lambda: len(fleet_status(broker)) == 3, timeout=20), orch.log_path.read_text()[-2000:]
        yield broker, orch
    finally:
        w.close()
        orch.stop()
        broker.stop()


def _status(
    site: tuple[Mosquitto, Orchestrator], api: BalenaStandIn, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    broker, _ = site
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALENA")}
    env.update(BALENA_API_KEY=TOKEN, EDGEFLEET_BALENA_API_URL=api.url, HOME=str(tmp))
    env.update(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab", EDGEFLEET_CLI_CONFIG=os.devnull)
    done = subprocess.run([*_command(), "status", "--fleet", "acme/site-1", *extra], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert TOKEN not in done.stdout + done.stderr and api.unexpected == [], api.unexpected
    return done


def test_balena_and_edgefleet_side_by_side_with_disagreements_flagged(
    site: tuple[Mosquitto, Orchestrator], tmp_path: Path
) -> None:
    with BalenaStandIn(TOKEN, {"acme/site-1": APP}, DEVICES) as api:
        done = _status(site, api, tmp_path, "--json")
        assert done.returncode == 0, done.stderr
        rows = {r["node_id"]: r for r in json.loads(done.stdout)}
        assert rows["cam-east"]["balena"] == "online" and rows["cam-east"]["edgefleet"] == "offline"
        assert rows["cam-east"]["flag"] == "online in balena, node offline"
        assert rows["orin-a"] == {**rows["orin-a"], "device": "orin-1", "edgefleet": "online", "flag": ""}
        assert rows["spare"]["balena"] == "offline" and rows["spare"]["edgefleet"] == "not seen"
        assert rows["spare"]["flag"] == ""
        assert rows["bench-pc"]["device"] == "-" and rows["bench-pc"]["flag"] == "not a device of this balena fleet"
        table = _status(site, api, tmp_path)
        assert table.returncode == 0 and "! online in balena, node offline" in table.stdout
        assert "4 rows, 2 flagged" in table.stdout


def test_a_refused_token_is_named_and_nothing_else_is_shown(tmp_path: Path) -> None:
    with BalenaStandIn(TOKEN, {"acme/site-1": APP}, DEVICES) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BALENA")}
        env.update(BALENA_API_KEY="wrong-token", EDGEFLEET_BALENA_API_URL=api.url, HOME=str(tmp_path))
        done = subprocess.run([*_command(), "status", "--fleet", "acme/site-1"], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and "401" in done.stderr and "BALENA_API_KEY" in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_sync_with_assign_groups_sends_the_tags_groups_to_the_orchestrator(
    site: tuple[Mosquitto, Orchestrator], tmp_path: Path
) -> None:
    """`sync --assign-groups`: no EDGEFLEET_GROUPS variable (a variable restarts the service on
    balena); the orchestrator publishes a signed assignment for the node instead."""
    broker, _ = site
    w = Watcher(broker, T.node_assignment("cam-east"))
    try:
        with BalenaStandIn(TOKEN, {"acme/site-1": APP}, DEVICES) as api:
            env = {k: v for k, v in os.environ.items() if not k.startswith("BALENA")}
            env.update(BALENA_API_KEY=TOKEN, EDGEFLEET_BALENA_API_URL=api.url, HOME=str(tmp_path))
            env.update(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab", EDGEFLEET_CLI_CONFIG=os.devnull)
            cmd = [*_command(), "sync", "--fleet", "acme/site-1", "--device-mqtt-url", broker.url, "--assign-groups"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
            assert "assign-groups cam-east cams" in done.stdout and "ok:" in done.stdout, done.stdout + done.stderr
            assert "EDGEFLEET_GROUPS" not in api.env(1) and api.env(1)["EDGEFLEET_NODE_ID"] == "cam-east"
        assert wait_for(lambda: any(m.get("groups") == ["cams"] for m in w.on(T.node_assignment("cam-east"))), 10)
        assignment = w.on(T.node_assignment("cam-east"))[-1]
        assert assignment["node_id"] == "cam-east" and assignment["signature"], "signed with the site key"
    finally:
        w.close()


def test_fleet_status_with_balena_shows_both_views(site: tuple[Mosquitto, Orchestrator], tmp_path: Path) -> None:
    broker, _ = site
    with BalenaStandIn(TOKEN, {"acme/site-1": APP}, DEVICES) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BALENA")}
        env.update(BALENA_API_KEY=TOKEN, EDGEFLEET_BALENA_API_URL=api.url, HOME=str(tmp_path))
        env.update(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab", EDGEFLEET_CLI_CONFIG=os.devnull)
        base = [str(BIN / "edgefleet"), "fleet", "status", "--balena", "acme/site-1"]
        done = subprocess.run([*base, "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert {n["node_id"] for n in doc["nodes"]} >= {"cam-east", "orin-a"}
        flags = {r["node_id"]: r["flag"] for r in doc["balena"]}
        assert flags["cam-east"] == "online in balena, node offline" and flags["orin-a"] == ""
        table = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
        assert "balena fleet acme/site-1:" in table.stdout and "! online in balena, node offline" in table.stdout
        assert TOKEN not in done.stdout + done.stderr + table.stdout + table.stderr
