"""One site for the front-door tests: a real Mosquitto, two real nodes (group `pair`) and a real
orchestrator whose front door listens on free ports. Shared by every module here (package scope):
each node start loads a model, so tests that need other nodes start them beside these two."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.orchestrator.api_keys import KeyStore
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, node_env

# small, so a test can fill the fleet: two front-door requests per node, two may wait 1.5 s
FRONT_DOOR_ENV = {
    "EDGEFLEET_ROUTE_MAX_SLOTS_PER_NODE": "2",
    "EDGEFLEET_ROUTE_BUFFER_SIZE": "2",
    "EDGEFLEET_ROUTE_BUFFER_WAIT_S": "1.5",
    "EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S": "20",
    "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5",
    "EDGEFLEET_LOG_LEVEL": "DEBUG",
}


@dataclass
class Site:
    broker: Mosquitto
    orchestrator: Orchestrator
    nodes: dict[str, NodeProcess]
    grpc_address: str
    http: str  # base URL of the OpenAI API
    tmp: Path
    api_key: str  # the gRPC listener takes API keys (HTTPS takes the harness certificate too)

    def __post_init__(self) -> None:
        self.channel = site_identity.site().grpc_channel(self.grpc_address, api_key=self.api_key)
        self.stub = pb_grpc.InferenceStub(self.channel)

    def get(self, path: str) -> Any:
        with site_identity.site().urlopen(self.http + path) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        with site_identity.site().urlopen(self.http + "/metrics") as r:
            return str(r.read().decode())

    def serving(self) -> dict[str, list[str]]:
        """model id → the nodes the front door routes it to (GET /v1/models)."""
        try:
            return {m["id"]: m["nodes"] for m in self.get("/v1/models")["data"]}
        except OSError:
            return {}

    def model(self) -> str:
        return next(m for m in self.serving() if ":" not in m)

    def wait_routable(self, *node_ids: str, timeout: float = 20) -> None:
        ok = wait_for(lambda: any(set(node_ids) <= set(n) for n in self.serving().values()), timeout=timeout)
        assert ok, f"front door does not route to {node_ids}: {self.serving()}\n{self.orchestrator_log()[-3000:]}"

    def orchestrator_log(self) -> str:
        return self.orchestrator.log_path.read_text(errors="replace")

    def start_node(self, node_id: str, **env: str) -> NodeProcess:
        n = NodeProcess(self.tmp, env=node_env(self.broker, EDGEFLEET_GROUPS="pair", **env), node_id=node_id)
        self.nodes[node_id] = n
        n.wait_serving()
        return n


@pytest.fixture(scope="package")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("front-door")
    broker = Mosquitto(tmp)
    grpc_port, http_port = free_port(), free_port()
    env = {
        **FRONT_DOOR_ENV,
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
    }
    store = KeyStore(tmp / "api-keys.db")  # the orchestrator's default: beside its registry
    # every collection, and the harness certificate's limits too (none): the tests poll freely
    api_key = store.create("harness", collections=["*"], identity=site_identity.HARNESS)[1]
    store.close()
    orch = Orchestrator(tmp, broker, env=env)
    s = Site(broker, orch, {}, f"127.0.0.1:{grpc_port}", f"https://127.0.0.1:{http_port}", tmp, api_key)
    try:
        for node_id in ("fd-a", "fd-b"):
            s.nodes[node_id] = NodeProcess(tmp, env=node_env(broker, EDGEFLEET_GROUPS="pair"), node_id=node_id)
        for n in s.nodes.values():
            n.wait_serving()
        s.wait_routable("fd-a", "fd-b")
        yield s
    finally:
        s.channel.close()
        for n in s.nodes.values():
            n.stop()
        orch.stop()
        broker.stop()
