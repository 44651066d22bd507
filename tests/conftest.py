"""Fixtures that start real node processes on free ports and stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.plumbing.site_tls import channel_credentials, target_name
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "firmware_profiles"
BIN = Path(sys.executable).parent


def pytest_configure(config: pytest.Config) -> None:
    site_identity.site()  # the suite runs secure: every process inherits the harness identity
    config.addinivalue_line(
        "markers",
        "in_file_order: the module's tests are one story on one site, each starting where the one "
        "before left it (a model pushed, then switched back): they run in file order, whatever the shuffle",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """After pytest-randomly's shuffle: the tests of an `in_file_order` module back in file order, in
    the places the shuffle gave the module's tests (the other modules keep their shuffled order)."""
    places: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.get_closest_marker("in_file_order") is not None:
            places.setdefault(item.nodeid.split("::")[0], []).append(i)
    for idx in places.values():
        story = sorted((items[i] for i in idx), key=lambda it: it.location[1] or 0)
        for i, item in zip(idx, story, strict=True):
            items[i] = item


def pytest_unconfigure(config: pytest.Config) -> None:
    site_identity.remove()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_profile(path: Path, base: str = "x86-dev", **changes: object) -> Path:
    """Copy a shipped profile, replacing `key = value` lines (keys are unique across sections)."""
    lines = []
    for line in (PROFILES / f"{base}.toml").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and key in changes:
            value = changes[key]
            line = f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProcess:
    """`edgefleet-node serve` in a subprocess, talked to over real gRPC."""

    def __init__(
        self,
        tmp: Path,
        profile: str | Path = "x86-dev",
        env: dict[str, str] | None = None,
        node_id: str | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_id = node_id or f"test-{self.port}"
        self.log_path = tmp / f"node-{self.node_id}.log"
        self.data_dir = tmp / f"data-{self.node_id}"
        self.tmp, self.profile, self.env = tmp, profile, env or {}
        self._log = self.log_path.open("ab")
        # The response cache would answer a repeated greedy request without the engine; tests that
        # compare generations (batched vs alone, adapters) need the engine every time.
        # One compute thread: tests run two nodes, a broker and their clients on a 2-core runner, and
        # ggml's threads spin at barriers, so 2 threads sharing cores with anything else decode ~7x
        # slower (136 -> 19 tok/s with one busy process beside them); one thread keeps ~131 tok/s.
        env = env or {}
        self.insecure = env.get("EDGEFLEET_INSECURE", os.environ.get("EDGEFLEET_INSECURE", "")) in ("1", "true")
        own = {} if self.insecure else site_identity.site().node_env(self.node_id)
        full_env = {
            **os.environ,
            **own,
            "EDGEFLEET_LOG_FORMAT": "text",
            "EDGEFLEET_RESPONSE_CACHE": "false",
            "EDGEFLEET_THREADS": "1",
            **env,
        }
        self.proc = subprocess.Popen(
            [
                str(BIN / "edgefleet-node"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--profile",
                str(profile),
                "--data-dir",
                str(self.data_dir),
                "--node-id",
                self.node_id,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.channel = self.open_channel()
        self.stub = pb_grpc.InferenceStub(self.channel)

    def open_channel(self, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
        """A channel to this node: mutual TLS as the harness operator (or, for a node enrolled in a
        PKI of the test's own, as the node's own certificate), plaintext for an insecure node."""
        if self.insecure:
            return grpc.insecure_channel(self.address, options=options or [])
        if "EDGEFLEET_MQTT_CA_FILE" in self.env:
            e = self.env
            files = TlsFiles(
                Path(e["EDGEFLEET_MQTT_CERT_FILE"]),
                Path(e["EDGEFLEET_MQTT_KEY_FILE"]),
                Path(e["EDGEFLEET_MQTT_CA_FILE"]),
            )
            opts = [*(options or []), *target_name(self.node_id)]
            return grpc.secure_channel(self.address, channel_credentials(files), options=opts)
        return site_identity.site().grpc_channel(self.address, self.node_id, options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 60.0) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"node not serving after {timeout}s:\n{self.log()[-3000:]}")

    def info(self) -> pb.NodeInfo:
        return self.stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)

    def restarted(self) -> NodeProcess:
        """A new process with this one's id, port, settings and data directory (after kill or stop)."""
        return NodeProcess(self.tmp, self.profile, self.env, self.node_id, self.port)

    def kill(self) -> None:
        """SIGKILL: no goodbye, the broker publishes the last will."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator:
    """Factory: start a node with a given profile/env; every node started is stopped after the test."""
    nodes: list[NodeProcess] = []

    def _start(
        profile: str | Path = "x86-dev",
        env: dict[str, str] | None = None,
        wait: bool = True,
        node_id: str | None = None,
        port: int | None = None,
    ) -> NodeProcess:
        node = NodeProcess(tmp_path, profile, env, node_id, port)
        nodes.append(node)
        if wait:
            node.wait_serving()
        return node

    yield _start
    for n in nodes:
        n.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One TLS Mosquitto per test module (tests.mqtt_support.Mosquitto), stopped after it."""
    from tests.mqtt_support import Mosquitto

    b = Mosquitto(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def orchestrator(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One orchestrator process per test module on the module's broker (a module may define its own)."""
    from tests.mqtt_support import Orchestrator

    o = Orchestrator(tmp_path_factory.mktemp("orchestrator"), broker)
    yield o
    o.stop()


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the session: x86-dev profile, default model."""
    tmp = tmp_path_factory.mktemp("node")
    n = NodeProcess(tmp)
    try:
        n.wait_serving()
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def stub(node: NodeProcess) -> pb_grpc.InferenceStub:
    return node.stub


def collect(stream: Iterator[pb.GenerateChunk]) -> tuple[str, pb.GenerateChunk, int]:
    """Concatenated text, the final chunk and the number of chunks of a Generate stream."""
    text, last, n = [], None, 0
    for chunk in stream:
        text.append(chunk.text)
        last = chunk
        n += 1
    assert last is not None, "empty stream"
    return "".join(text), last, n


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
