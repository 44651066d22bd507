"""Two real Mosquitto brokers: site a's, bridged to a central one, and one real node on site a."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet import uplink_commands
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.site.bridge_config import CentralBroker, bridge_conf
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import BIN, NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Watcher, node_env
from tests.sites.brokers import BridgedMosquitto

A = Topics.for_site("a")
NODE = "n1"


def fleet_run(*argv: str, site: str = "a") -> tuple[int, str]:
    """The verbs as the CLI runs them: parsed by add_parsers, run with the CLI's settings."""
    parser = argparse.ArgumentParser()
    fsub = parser.add_subparsers(dest="fleet_command", required=True)
    uplink_commands.add_parsers(fsub)
    out = io.StringIO()
    if "sites-status" in argv:  # the central broker takes site certificates (the harness's here)
        h = site_identity.site().harness_dir
        argv = (*argv, "--central-ca-file", str(h / "ca.crt"), "--central-cert-file", str(h / "client.crt"))
        argv = (*argv, "--central-key-file", str(h / "client.key"))
    rc = uplink_commands.run(parser.parse_args(list(argv)), FleetSettings(site=site), out)
    return rc, out.getvalue()


def statuses(w: Watcher, topic: str) -> list[dict[str, Any]]:
    with w._lock:
        return [json.loads(p) for t, p in w.messages if t == topic and p]


def test_bridge_conf_uses_the_topic_contract() -> None:
    text = bridge_conf("a", CentralBroker.parse("central.example:8883", ca_file="/ca.pem"))
    for line in (
        "topic edgefleet/a/node/+/status out 1",
        "topic edgefleet/a/node/+/telemetry out 1",
        "topic edgefleet/a/node/+/reported out 1",
        "topic edgefleet/a/desired/# in 1",
        "address central.example:8883",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        "try_private true",
        "local_clientid edgefleet-bridge-a-local",
        "bridge_cafile /ca.pem",
    ):
        assert line in text.splitlines(), line
    with pytest.raises(ValueError):
        CentralBroker.parse("no-port")
    with pytest.raises(ValueError):
        bridge_conf("a/b", CentralBroker.parse("h:1"))
    rc, out = fleet_run("uplink-config", "--central", "h:1883", site="b")
    assert rc == 0 and "topic edgefleet/b/node/+/status out 1" in out


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Mosquitto, BridgedMosquitto, NodeProcess]]:
    central = Mosquitto(tmp_path / "central")
    site_a = BridgedMosquitto(tmp_path / "a", "a", central)
    node = NodeProcess(tmp_path, env=node_env(site_a, site="a"), node_id=NODE)
    try:
        node.wait_serving()
        yield central, site_a, node
    finally:
        node.stop()
        site_a.stop()
        central.stop()


def test_site_reaches_central_and_catches_up_after_an_outage(
    sites: tuple[Mosquitto, BridgedMosquitto, NodeProcess],
) -> None:
    central, site_a, node = sites
    status, telemetry = A.node_status(NODE), A.node_telemetry(NODE)

    # Up: the node's retained status and its telemetry arrive on the central broker, same topics.
    up = Watcher(central, "edgefleet/+/node/+/#")
    try:
        assert wait_for(lambda: any(s["state"] == "online" for s in statuses(up, status)), 20), site_a.log()[-2000:]
        assert wait_for(lambda: statuses(up, telemetry), 10)
    finally:
        up.close()

    # `fleet sites-status` lists it (from the retained status on the central broker).
    rc, out = fleet_run("sites-status", "--central-url", central.url, "--json")
    rows = json.loads(out)
    assert rc == 0 and {(r["site"], r["node_id"], r["state"]) for r in rows} == {("a", NODE, "online")}
    assert rows[0]["last_seen"] and time.time() - rows[0]["last_seen"] < 30
    rc, out = fleet_run("sites-status", "--central-url", central.url)
    assert rc == 0 and out.splitlines()[0].split() == ["SITE", "NODE", "STATE", "LAST", "SEEN"]
    assert out.splitlines()[1].split()[:3] == ["a", NODE, "online"]

    # Down: desired state published on the central broker reaches site a's broker (for another
    # node id, so the node itself ignores it; this checks the bridge, not the node).
    local_desired = Watcher(site_a, A.all_desired())
    central_client = Watcher(central, "edgefleet/nobody/#")
    try:
        central_client.publish(A.desired_node("ghost"), b'{"v": 1, "probe": 1}', retain=True)
        assert wait_for(lambda: (A.desired_node("ghost"), b'{"v": 1, "probe": 1}') in local_desired.messages, 10)
        central_client.publish(A.desired_node("ghost"), b"", retain=True)  # clear it
    finally:
        central_client.close()
        local_desired.close()

    # Cut the bridge: the central broker goes away; its state (retained status included) is lost.
    central.stop()
    for f in central.dir.glob("mosquitto.db*"):
        f.unlink()
    req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="Say hi")], max_tokens=8, temperature=0)
    _text, last, _ = collect(node.stub.Generate(req, timeout=60))
    assert last is not None
    local = Watcher(site_a, status)
    try:
        assert wait_for(lambda: statuses(local, status), 5)
        assert statuses(local, status)[-1]["state"] == "online"
    finally:
        local.close()

    # The central broker returns: the bridge reconnects by itself and the node is seen again.
    back = time.time()
    central.start()
    again = Watcher(central, "edgefleet/+/node/+/#")
    try:
        assert wait_for(lambda: any(t["ts"] > back for t in statuses(again, telemetry)), 20), site_a.log()[-2000:]
        assert wait_for(lambda: any(s["state"] == "online" for s in statuses(again, status)), 10), site_a.log()[-2000:]
    finally:
        again.close()
    rc, out = fleet_run("sites-status", "--central-url", central.url, "--json")
    assert rc == 0 and [(r["site"], r["node_id"], r["state"]) for r in json.loads(out)] == [("a", NODE, "online")]


def test_init_site_with_uplink_writes_the_same_bridge_as_uplink_config(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFLEET_SITE": "a", "EDGEFLEET_CLI_CONFIG": os.devnull}
    cmd = [str(BIN / "edgefleet"), "fleet", "init-site", "--dir", str(tmp_path), "--uplink", "central.example:8883"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = (tmp_path / "a.key").read_bytes()
    assert "uplink.conf" in done.stdout
    rc, printed = fleet_run("uplink-config", "--central", "central.example:8883")
    assert rc == 0 and (tmp_path / "uplink.conf").read_text() == printed
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (tmp_path / "a.key").read_bytes() == key, "the site key is kept"
