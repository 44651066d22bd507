"""An insecure node keeps to the loopback interface and says it is insecure (issue 22).

A real `edgefleet-node serve` with EDGEFLEET_INSECURE=1 and no --host, on a real (plaintext)
Mosquitto with a real orchestrator: its gRPC and metrics listeners are bound to 127.0.0.1 only
(read from the kernel's socket tables, /proc/net/tcp and tcp6), its retained status says
`"insecure": true` and advertises a loopback address, and `fleet status --json` carries the flag.
The settings' rules (an explicit address is kept and warned about; secure mode keeps 0.0.0.0)
are checked on NodeSettings itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.node.settings import NodeSettings
from edgefleet.proto.topics import Topics
from tests.conftest import BIN, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet_status
from tests.node.listeners import listening

TOPICS = Topics.for_site("lab")
NODE_ID = "insecure-1"


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("insecure-node")
    broker = Mosquitto(tmp, insecure=True)
    watcher = Watcher(broker, TOPICS.node_status(NODE_ID))
    orch = Orchestrator(tmp, broker)  # insecure like the broker (tests.mqtt_support)
    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFLEET_HOST", "EDGEFLEET_ADVERTISE_ADDRESS")}
    env.update(
        EDGEFLEET_INSECURE="1",
        EDGEFLEET_MQTT_URL=broker.url,
        EDGEFLEET_SITE="lab",
        EDGEFLEET_METRICS_PORT=str(metrics),
        EDGEFLEET_THREADS="1",
        EDGEFLEET_LOG_FORMAT="text",
    )
    log_path = tmp / "node.log"
    # no --host: the default is what is under test
    argv = ["serve", "--port", str(port), "--profile", "x86-dev", "--data-dir", str(tmp / "data")]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "edgefleet-node"), *argv, "--node-id", NODE_ID],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        assert wait_for(lambda: proc.poll() is not None or _serving(f"127.0.0.1:{port}"), timeout=120), (
            log_path.read_text()[-3000:]
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        yield {"broker": broker, "watcher": watcher, "port": port, "metrics": metrics, "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        watcher.close()
        orch.stop()
        broker.stop()


def test_an_insecure_node_listens_on_loopback_only_by_default(site: dict[str, Any]) -> None:
    assert listening(site["port"]) == {"127.0.0.1"}, "gRPC of an insecure node is reachable from the network"
    assert wait_for(lambda: listening(site["metrics"]) == {"127.0.0.1"}, timeout=10), listening(site["metrics"])
    assert "INSECURE listener exposed" not in Path(site["log"]).read_text()


def test_an_insecure_node_says_so_in_its_retained_status(site: dict[str, Any]) -> None:
    watcher = site["watcher"]
    assert isinstance(watcher, Watcher)
    assert wait_for(lambda: any(m.get("state") == "online" for m in watcher.json()), timeout=30)
    online = [m for m in watcher.json() if m.get("state") == "online"][-1]
    assert online["info"]["insecure"] is True, online
    assert online["info"]["grpc_address"] == f"127.0.0.1:{site['port']}"
    # retained: a client that subscribes now is told too
    late = Watcher(site["broker"], TOPICS.node_status(NODE_ID))
    try:
        assert wait_for(lambda: bool(late.json()), timeout=10)
        assert late.json()[-1]["info"]["insecure"] is True
    finally:
        late.close()
    # and the fleet view passes it on: `edgefleet fleet status --json`
    assert wait_for(lambda: fleet_status(site["broker"]).get(NODE_ID, {}).get("insecure") is True, timeout=30)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_node_listen_defaults_follow_the_mode(clean_env: pytest.MonkeyPatch) -> None:
    assert NodeSettings().host == "0.0.0.0"  # secure: mutual TLS guards every listener
    assert NodeSettings(insecure=True).host == "127.0.0.1"
    assert NodeSettings(insecure=True).exposed_listeners() == {}
    assert NodeSettings(insecure=True, host="127.0.0.1").exposed_listeners() == {}
    clean_env.setenv("EDGEFLEET_INSECURE", "1")
    assert NodeSettings().host == "127.0.0.1"
    clean_env.setenv("EDGEFLEET_HOST", "0.0.0.0")  # set explicitly: kept
    assert NodeSettings().host == "0.0.0.0"


def test_an_explicit_insecure_address_is_kept_and_warned_about(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.insecure_node")
    s = NodeSettings(insecure=True, host="0.0.0.0", port=50051, metrics_port=9101)
    assert s.host == "0.0.0.0"
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert s.may_start(log, "edgefleet-node", "this node")
    exposed = [r.getMessage() for r in caplog.records if "INSECURE listener exposed on" in r.getMessage()]
    assert len(exposed) == 2, exposed
    assert "exposed on 0.0.0.0:50051" in exposed[0] and "exposed on 0.0.0.0:9101" in exposed[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):  # secure mode: no such warning
        NodeSettings(host="0.0.0.0").warn_if_insecure(log, "this node")
    assert not caplog.records
