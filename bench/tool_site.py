"""A real site for the tool-calling evaluation: Mosquitto, one node per model, an orchestrator.

Each node serves one catalog model (`EDGEFLEET_MODEL`), so the front door routes a request by its
`model` field; the bench asks only through the front door's OpenAI API, with the official client.
Secure by default (bench/site_security.py: a site PKI made for the run, mutual TLS everywhere, the
bench's client shows the `harness` operator certificate); `--insecure`: plaintext.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import openai

from bench.processes import free_port, log_tail, stop_process
from bench.site_security import BenchSecurity
from tests import site_identity
from tests.mqtt_support import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def model_label(model: str) -> str:
    """The name the front door serves a model by: a catalog name as it is, a GGUF path by its stem."""
    return Path(model).stem if model.endswith(".gguf") else model


class ToolSite:
    """Started by the constructor, stopped by `close()`; logs stay in `tmp` until then."""

    def __init__(self, tmp: Path, security: BenchSecurity, models: list[str], threads: int) -> None:
        self.tmp, self.security, self.procs = tmp, security, {}  # type: ignore[var-annotated]
        self.broker = Mosquitto(tmp, insecure=security.insecure)
        self.env = {"EDGEFLEET_MQTT_URL": self.broker.url, "EDGEFLEET_SITE": security.site, **security.env()}
        self.nodes: dict[str, str] = {}  # model → node id
        self.http_port, self.grpc_port = free_port(), free_port()
        try:
            for i, model in enumerate(models):
                self._start_node(f"tools-{i}", model, threads)
            self._start_orchestrator()
            self.wait_routable()
        except BaseException:
            self.close()
            raise

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        full = {**os.environ, "EDGEFLEET_LOG_LEVEL": "WARNING", "EDGEFLEET_LOG_FORMAT": "text", **env}
        self.procs[name] = subprocess.Popen(cmd, env=full, stdout=log, stderr=log, start_new_session=True)

    def _start_node(self, node_id: str, model: str, threads: int) -> None:
        port = free_port()
        env = {**self.env, "EDGEFLEET_THREADS": str(threads), "EDGEFLEET_TELEMETRY_INTERVAL_S": "1",
               "EDGEFLEET_RESPONSE_CACHE": "false", "EDGEFLEET_MODEL": model,
               **self.security.node_env(node_id)}  # fmt: skip
        cmd = [str(BIN / "edgefleet-node"), "serve", "--profile", "x86-dev", "--host", "127.0.0.1",
               "--port", str(port), "--node-id", node_id, "--data-dir", str(self.tmp / node_id)]  # fmt: skip
        self._spawn(node_id, cmd, env)
        channel = self.security.channel(f"127.0.0.1:{port}", node_id)
        try:
            grpc.channel_ready_future(channel).result(timeout=180)
        except grpc.FutureTimeoutError as e:
            raise RuntimeError(f"node {node_id} ({model}) did not start:\n{self.log(node_id)}") from e
        finally:
            channel.close()
        self.nodes[model_label(model)] = node_id

    def _start_orchestrator(self) -> None:
        env = {
            **self.env,
            **self.security.orchestrator_env(),
            "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{self.grpc_port}",
            "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{self.http_port}",
            "EDGEFLEET_ARTIFACT_DIR": str(self.tmp / "artifacts"),
            # one request at a time per node, and a slow first token (a 0.5B model reading seven
            # tool schemas on one core) is not a failure
            "EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S": "120",
        }
        cmd = [str(BIN / "edgefleet-orchestrator"), "serve", "--registry-db", str(self.tmp / "registry.db")]
        self._spawn("orchestrator", cmd, env)

    @property
    def base_url(self) -> str:
        return f"{self.security.http_scheme}://127.0.0.1:{self.http_port}/v1"

    def client(self, timeout: float) -> openai.OpenAI:
        """The official client: HTTPS with the harness certificate, or plain HTTP when insecure."""
        if self.security.insecure:
            return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=timeout)
        return site_identity.site().openai(self.base_url, timeout=timeout)

    def serving(self) -> dict[str, list[str]]:
        """model → the nodes the front door routes it to (GET /v1/models)."""
        url = self.base_url + "/models"
        try:
            with urllib.request.urlopen(url, timeout=5, context=self.security.ssl_context()) as r:
                data: Any = json.loads(r.read())
        except OSError:
            return {}
        return {m["id"]: m["nodes"] for m in data["data"]}

    def wait_routable(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            serving = self.serving()
            if all(node in serving.get(model, []) for model, node in self.nodes.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the front door does not route {self.nodes} (it serves {serving}):\n{self.log('orchestrator')}"
                )
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return log_tail(self.tmp / f"{name}.log")

    def close(self) -> None:
        for name in ["orchestrator", *self.procs]:
            stop_process(self.procs.get(name))
        self.broker.stop()
