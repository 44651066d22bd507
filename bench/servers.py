"""The backends that are servers: the node (gRPC), llama_cpp.server and llama-server (HTTP)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.backend import ThreadedBackend
from bench.clients import Client, LlamaServerClient, NodeClient, OpenAICompletionsClient
from bench.processes import free_port, log_tail
from bench.settings import (
    BENCH_DIR,
    GPU_LAYERS,
    LLAMA_SERVER_BIN,
    N_BATCH,
    N_CTX_SLOT,
    PROFILE_TEMPLATE,
    QUEUE_LENGTH,
    SLOTS,
    START_TIMEOUT_S,
    THREADS,
)
from bench.site_security import BenchSecurity

NODE_ID = "bench-node"  # the CN of its certificate, checked by the bench's clients when secure


def node_profile(tmp: Path) -> Path:
    """x86-dev with 8 slots of 2048 tokens: one node configuration for every level."""
    import tomllib

    text = PROFILE_TEMPLATE.read_text(encoding="utf-8")
    data = tomllib.loads(text)  # only to check the keys we rewrite exist
    for section, key in (
        ("device", "name"),
        ("context", "slots"),
        ("context", "queue_length"),
        ("context", "n_ctx"),
        ("context", "n_batch"),
        ("compute", "threads"),
        ("compute", "gpu_layers"),
    ):
        if key not in data.get(section, {}):
            raise SystemExit(f"{PROFILE_TEMPLATE} has no [{section}] {key}")
    out, section = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        key = s.split("=", 1)[0].strip() if "=" in s and not s.startswith("#") else ""
        repl = {
            ("device", "name"): 'name = "x86-dev-bench8"',
            ("context", "slots"): f"slots = {SLOTS}",
            ("context", "queue_length"): f"queue_length = {QUEUE_LENGTH}",
            ("context", "n_ctx"): f"n_ctx = {N_CTX_SLOT}",
            ("context", "n_batch"): f"n_batch = {N_BATCH}",
            ("compute", "threads"): f"threads = {THREADS}",
            ("compute", "gpu_layers"): f"gpu_layers = {GPU_LAYERS}",
        }.get((section, key))
        out.append(repl if repl is not None else line)
    path = tmp / "x86-dev-bench8.toml"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def wait_serving(port: int, proc: subprocess.Popen[Any], timeout: float, security: BenchSecurity) -> float:
    """Poll grpc.health.v1 Check every 20 ms until SERVING; returns the perf_counter time."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.perf_counter() + timeout
    channel = None
    try:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with code {proc.returncode} before it was SERVING")
            try:  # a plain TCP connect first: the node listens only once the model is loaded
                socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            except OSError:
                time.sleep(0.02)
                continue
            if channel is None:
                channel = security.channel(
                    f"127.0.0.1:{port}",
                    NODE_ID,
                    options=[
                        ("grpc.initial_reconnect_backoff_ms", 20),
                        ("grpc.min_reconnect_backoff_ms", 20),
                        ("grpc.max_reconnect_backoff_ms", 50),
                    ],
                )
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter()
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    finally:
        if channel is not None:
            channel.close()
    raise RuntimeError(f"node not SERVING within {timeout:.0f} s")


def node_info(address: str, security: BenchSecurity) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    from edgefleet.proto.v1 import inference_pb2 as pb
    from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

    with security.channel(address, NODE_ID) as ch:
        info = pb_grpc.InferenceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    return MessageToDict(info, preserving_proto_field_name=True)


def wait_http(base: str, path: str, proc: subprocess.Popen[Any], timeout: float, log_path: Path) -> float:
    import httpx

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}\n--- log ---\n{log_tail(log_path)}")
        try:
            r = httpx.get(base + path, timeout=1.0)
            if r.status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base}{path} not ready within {timeout:.0f} s\n--- log ---\n{log_tail(log_path)}")


class NodeBackend(ThreadedBackend):
    name = "node"

    def start(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        node_bin = Path(sys.executable).parent / "edgefleet-node"
        self._tmp = tempfile.TemporaryDirectory(prefix="edgefleet-bench-")
        tmp = Path(self._tmp.name)
        profile = node_profile(tmp)
        cmd = [
            str(node_bin) if node_bin.exists() else "edgefleet-node",
            "serve",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--profile",
            str(profile),
            "--data-dir",
            str(tmp / "data"),
            "--node-id",
            NODE_ID,
            "--log-format",
            "text",
        ]
        self.info["profile_file"] = profile.read_text()
        security = self.ctx.security
        self.info["security"] = security.mode
        env = {
            **os.environ,
            **security.node_env(NODE_ID),
            # Measure the engine: the response cache would answer the repeated greedy prompts by itself.
            "EDGEFLEET_RESPONSE_CACHE": "false",
        }
        t_start = time.perf_counter()
        proc = self._spawn(cmd, tmp, env=env)
        try:
            t_ready = wait_serving(port, proc, START_TIMEOUT_S, security)
        except RuntimeError as e:
            raise self.failure(e) from e
        self.info["cold_start_s"] = round(t_ready - t_start, 3)
        print(f"  node cold start (Popen -> SERVING): {t_ready - t_start:.3f} s", flush=True)

    def make_client(self) -> Client:
        return NodeClient(self.ctx.security.channel(self.address, NODE_ID))

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.info["node_info"] = node_info(self.address, self.ctx.security)
        super().finish()

    def stop(self) -> None:
        super().stop()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()


class HttpBackend(ThreadedBackend):
    ready_path = "/health"

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        t_start = time.perf_counter()
        proc = self._spawn(self.command(port), BENCH_DIR)
        t_ready = wait_http(self.base, self.ready_path, proc, START_TIMEOUT_S, self.log_path)
        self.info["start_s"] = round(t_ready - t_start, 3)
        print(f"  {self.name} ready in {t_ready - t_start:.2f} s", flush=True)


class LlamaCppServerBackend(HttpBackend):
    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.ctx.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(N_CTX_SLOT),
            "--n_batch",
            str(N_BATCH),
            "--n_ubatch",
            str(N_BATCH),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--n_gpu_layers",
            str(GPU_LAYERS),
            "--flash_attn",
            str(self.ctx.args.flash_attn == "on"),
            # Its default (True) cancels a running stream when the next request arrives.
            "--interrupt_requests",
            "False",
            "--verbose",
            "False",
        ]

    def make_client(self) -> Client:
        return OpenAICompletionsClient(self.base, self.ctx.count_tokens)


class LlamaServerBackend(HttpBackend):
    name = "llama-server"

    def command(self, port: int) -> list[str]:
        return [
            str(LLAMA_SERVER_BIN),
            "-m",
            str(self.ctx.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-np",
            str(SLOTS),
            "--kv-unified",
            "-c",
            str(N_CTX_SLOT * SLOTS),
            "-t",
            str(THREADS),
            "-tb",
            str(THREADS),
            "-ngl",
            str(GPU_LAYERS),
            "-b",
            str(N_BATCH),
            "-ub",
            str(N_BATCH),
            "--flash-attn",
            "auto" if self.ctx.args.flash_attn == "on" else "off",
            "--no-webui",
        ]

    def make_client(self) -> Client:
        return LlamaServerClient(self.base, ignore_eos=not self.ctx.args.no_ignore_eos)
