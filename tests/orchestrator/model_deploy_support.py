"""A real site for base-model deployments end to end, shared by tests/orchestrator/test_model_deploy_site.py
and bench/model_deploy.py: a TLS Mosquitto, an orchestrator with its front door (gRPC and OpenAI HTTP)
holding the site key, and nodes of one group on the default model. Models go out the operator's way
(`edgefleet fleet model push|rm`, `fleet rollout start`), and a client streams through the front door
with the official `openai` client while they do, counting every request that fails.

The site records, with the time each arrived, every node's reported state and every chunk request,
so a caller can tell when a transfer began and ended and when the node reported the new model.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.conftest import NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, fleet, node_env

T = Topics.for_site("lab")
GROUP = "edge"
OWN = "smollm2-135m-instruct"  # every node's own model (the default)


class Recorder:
    """Every message on some topic filters, each with the monotonic time it arrived."""

    def __init__(self, broker: Mosquitto, *filters: str) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self.client = broker.client()
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def on(self, topic: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, JSON payload) of the messages on `topic` that arrived after `since`."""
        with self._lock:
            found = [(t, p) for t, top, p in self.messages if top == topic and p and t >= since]
        return [(t, json.loads(p)) for t, p in found]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Streamer:
    """`clients` threads streaming chat completions of `model` through the front door, one after another."""

    http: str
    model: str = OWN
    clients: int = 2
    max_tokens: int = 16
    served: list[str] = field(default_factory=list)  # the node of each whole answer
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Streamer:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def _run(self, i: int) -> None:
        client = site_identity.site().openai(self.http + "/v1", timeout=120)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=[{"role": "user", "content": f"Count slowly from {n}:"}],
                    max_tokens=self.max_tokens,
                    temperature=0,
                    stream=True,
                )
                node = raw.headers.get("x-edgefleet-node", "?")
                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                if not text:
                    raise RuntimeError("empty answer")
                self.served.append(node)
            except Exception as e:  # every failure counts: an HTTP error, a stream cut short, an empty answer
                self.failures.append(f"client {i} request {n}: {type(e).__name__}: {e}"[:400])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(150)


class DeploySite:
    """Started by the constructor, stopped by `close()` (logs stay in `tmp`)."""

    def __init__(self, tmp: Path, nodes: tuple[str, ...], threads: int = 1, **orchestrator_env: str) -> None:
        self.tmp = tmp
        self.broker = Mosquitto(tmp)
        self.grpc_port, http_port = free_port(), free_port()
        self.http = f"https://127.0.0.1:{http_port}"
        env = {
            "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{self.grpc_port}",
            "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
            "EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S": "30",
            "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5",
            "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
            "EDGEFLEET_ROLLOUT_CASE_TIMEOUT_S": "60",
            **orchestrator_env,
        }
        self.nodes: dict[str, NodeProcess] = {}
        self.orchestrator: Orchestrator | None = None
        self.recorder: Recorder | None = None
        try:
            self.orchestrator = Orchestrator(tmp, self.broker, env=env)
            self.recorder = Recorder(
                self.broker,
                f"{T.root}node/+/reported",
                f"{T.root}node/+/status",
                T.all_artifact_chunk_requests(),
                f"{T.root}artifact/+/+/model/+/manifest",  # published once push-model accepted the upload
            )
            for n in nodes:
                extra = {"EDGEFLEET_GROUPS": GROUP, "EDGEFLEET_THREADS": str(threads)}
                self.nodes[n] = NodeProcess(tmp, env=node_env(self.broker, **extra), node_id=n)
            for node in self.nodes.values():
                node.wait_serving()
            ok = wait_for(lambda: sorted(self.serving().get(OWN, [])) == sorted(nodes), timeout=60)
            assert ok, f"the front door does not route to every node: {self.serving()}"
        except BaseException:
            self.close()
            raise

    # -- what the site shows ------------------------------------------------------------------------------
    def serving(self) -> dict[str, list[str]]:
        """GET /v1/models through the front door: model id → the nodes serving it."""
        try:
            with site_identity.site().urlopen(self.http + "/v1/models") as r:
                return {m["id"]: m["nodes"] for m in json.loads(r.read())["data"]}
        except OSError:
            return {}

    def reported(self, node: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        assert self.recorder is not None
        return self.recorder.on(T.node_reported(node), since)

    def reported_model(self, node: str) -> str:
        found = self.reported(node)
        return str(found[-1][1].get("model", "")) if found else ""

    def status_model(self, node: str) -> str:
        """The model of `node`'s last NodeStatus (info.model.name)."""
        assert self.recorder is not None
        found = self.recorder.on(T.node_status(node))
        return str(found[-1][1].get("info", {}).get("model", {}).get("name", "")) if found else ""

    def chunk_requests(self, name: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        assert self.recorder is not None
        with self.recorder._lock:
            topics = {top for _, top, _ in self.recorder.messages if top.startswith(f"{T.root}artifact/requests/")}
        found = [m for top in topics for m in self.recorder.on(top, since)]
        return sorted((m for m in found if m[1].get("name") == name), key=lambda m: m[0])

    def manifest_published(self, node: str, name: str, since: float) -> float | None:
        """When the manifest of model `name` under `node`'s own scope arrived after `since`."""
        assert self.recorder is not None
        found = self.recorder.on(T.artifact_manifest(T.artifact_scope("node", node), "model", name), since)
        return found[0][0] if found else None

    def when(self, node: str, test: Callable[[dict[str, Any]], bool], since: float) -> float | None:
        """The arrival time of `node`'s first reported state after `since` that passes `test`."""
        return next((t for t, r in self.reported(node, since) if test(r)), None)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`edgefleet <args>` as the harness operator."""
        return fleet(self.broker, *args, timeout=timeout)

    def log(self, node: str | None = None) -> str:
        if node is not None:
            return self.nodes[node].log()[-4000:]
        assert self.orchestrator is not None
        return self.orchestrator.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.recorder is not None:
            self.recorder.close()
        if self.orchestrator is not None:
            self.orchestrator.stop()
        self.broker.stop()
