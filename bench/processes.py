"""Processes the bench starts: free ports, stopping, log tails, and peak-RSS polling."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.site_security import BenchSecurity


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving_node(root: Path, data_dir: Path, env: dict[str, str], security: BenchSecurity) -> Any:
    """`edgefleet-node serve` (x86-dev profile, localhost) until the block ends; yields its gRPC channel
    (mutual TLS with the node's own certificate, or plaintext when `security` is insecure)."""
    import grpc

    port, node_id = free_port(), "bench-node"
    cmd = [str(root / ".venv/bin/edgefleet-node"), "serve", "--profile", "x86-dev", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(data_dir), "--node-id", node_id]
    full_env = {**os.environ, "EDGEFLEET_LOG_LEVEL": "WARNING", **security.node_env(node_id), **env}
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        channel = security.channel(f"127.0.0.1:{port}", node_id)
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel
        channel.close()
    finally:
        stop_process(proc, 30)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process we started (its own process group), then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def log_tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class RssMonitor:
    """Polls a process's RSS (with its children) every `interval` s; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.t_started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def sample(self) -> None:
        import psutil

        try:
            rss = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        except psutil.Error:
            return
        self.peak = max(self.peak, rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def vm_hwm(self) -> int | None:
        """The kernel's peak resident set of the process itself (VmHWM), in bytes."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(2)
