"""What bench/fleet_scale.py starts and reads: a Mosquitto with the bench's configuration, the real
orchestrator, the real CLI, and the orchestrator's registry (SQLite, read-only) and /proc figures."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.processes import free_port
from edgefleet.proto.payloads import OrchestratorStatus, PayloadError, parse_payload
from edgefleet.proto.topics import Topics

BIN = Path(sys.executable).parent
SITE = "lab"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Broker:
    """Mosquitto with the bench's configuration: plaintext, persistence (a restart keeps retained
    messages), no connection limit; `options`: extra configuration lines."""

    def __init__(self, directory: Path, options: list[str]) -> None:
        self.dir, self.port = directory, free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root it would switch users and could not write here
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            "allow_anonymous true",
            "max_connections -1",
            "persistence true",
            f"persistence_location {directory}/",
            "autosave_interval 60",
            f"log_dest file {directory}/mosquitto.log",
            *options,
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start; see {self.dir / 'mosquitto.log'}")

    def stop(self) -> None:
        stop(self.proc)


class Orchestrator:
    """`edgefleet-orchestrator serve`, insecure, its own registry, no front door listeners."""

    def __init__(self, directory: Path, broker: Broker) -> None:
        self.db = directory / "registry.db"
        self.log = directory / "orchestrator.log"
        self.env = {
            **os.environ,
            "EDGEFLEET_INSECURE": "1",
            "EDGEFLEET_ARTIFACT_DIR": str(directory / "artifacts"),
            "EDGEFLEET_FRONT_DOOR_ADDRESS": "",
            "EDGEFLEET_OPENAI_ADDRESS": "",
            "EDGEFLEET_METRICS_ADDRESS": "",
        }
        self.cmd = [str(BIN / "edgefleet-orchestrator"), "serve", "--mqtt-url", f"mqtt://127.0.0.1:{broker.port}"]
        self.cmd += ["--site", SITE, "--registry-db", str(self.db), "--log-format", "text"]
        self.port = broker.port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        """Start it and wait until it says `online` on the broker; the seconds that took."""
        t0 = time.time()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=log, start_new_session=True)
        if not orchestrator_online(self.port, t0, timeout):
            raise RuntimeError(f"the orchestrator did not come online in {timeout:.0f} s; see {self.log}")
        return time.time() - t0

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def orchestrator_online(port: int, since: float, timeout: float) -> bool:
    """Wait for a retained or live `online` on the orchestrator's status topic, sent after `since`.

    The client is driven with poll(), not paho's own loop: that uses select(), which refuses a socket
    numbered past 1,024, and the simulator's thousands of sockets in this process push ours past it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: list[bool] = []

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(PayloadError):
            status = parse_payload(OrchestratorStatus, bytes(msg.payload))
            if status.state == "online" and status.ts >= since - 1:
                seen.append(True)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, *_: cl.subscribe(Topics.for_site(SITE).orchestrator_status(), qos=1)
    c.on_message = on_message
    deadline = time.monotonic() + timeout
    c.connect("127.0.0.1", port)
    try:
        while not seen and time.monotonic() < deadline:
            sock = c.socket()
            if sock is None:
                return False
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(100):
                c.loop_read()
            if c.want_write():  # what a callback queued (the subscription) waits for a write
                c.loop_write()
            c.loop_misc()
        return bool(seen)
    finally:
        c.disconnect()


def wait(done: Callable[[], bool], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `done()` held, or None when `timeout` ran out."""
    t0 = time.monotonic()
    while True:
        if done():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def listed(db: Path, epoch: int | None = None, heard_since: float | None = None) -> int:
    """Nodes the registry lists online [with a birth of round `epoch`] [heard from since `heard_since`]."""
    sql = "SELECT count(*) FROM nodes WHERE state = 'online'"
    args: list[Any] = []
    if epoch is not None:
        sql += " AND json_extract(info, '$.versions.sim_epoch') = ?"
        args.append(str(epoch))
    if heard_since is not None:
        sql += " AND last_seen >= ?"
        args.append(heard_since)
    return _count(db, sql, args)


def confirmed(db: Path, target_key: str, generation: int) -> int:
    """Nodes listed online whose reported state in the registry has `generation` (or newer) of `target_key`
    (what an operator is shown; a node the orchestrator does not list confirms nothing)."""
    sql = (
        "SELECT count(*) FROM reported JOIN nodes USING (node_id) "
        "WHERE nodes.state = 'online' AND CAST(json_extract(reported.doc, ?) AS INTEGER) >= ?"
    )
    return _count(db, sql, [f'$.generations."{target_key}"', generation])


def _count(db: Path, sql: str, args: list[Any]) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            return int(con.execute(sql, args).fetchone()[0] or 0)
    except sqlite3.Error:
        return 0  # not created yet, or busy: the next poll tries again


def cli(port: int, *args: str, timeout: float = 60) -> tuple[float, subprocess.CompletedProcess[str] | None]:
    env = {**os.environ, "EDGEFLEET_MQTT_URL": f"mqtt://127.0.0.1:{port}", "EDGEFLEET_SITE": SITE}
    env["EDGEFLEET_INSECURE"] = "1"
    t0 = time.perf_counter()
    try:
        r = subprocess.run([str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, None
    return time.perf_counter() - t0, r


def cli_status(port: int, timeout: float) -> dict[str, Any]:
    """`fleet status --json`: wall time and nodes listed online, or the CLI's error."""
    seconds, r = cli(port, "--timeout", str(timeout), "fleet", "status", "--json", timeout=timeout + 15)
    if r is None:
        return {"s": seconds, "error": f"no answer in {timeout + 15:.0f} s"}
    if r.returncode != 0:
        return {"s": seconds, "error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200]}
    doc = json.loads(r.stdout)
    nodes = doc.get("nodes", []) if isinstance(doc, dict) else doc
    return {"s": seconds, "online": sum(1 for n in nodes if n.get("state") == "online"), "bytes": len(r.stdout)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def broker_sizing(n: int, mode: str) -> list[str]:
    """mosquitto.conf lines for a site of `n` nodes: `shipped`, the limits `fleet broker-config` writes
    (`BrokerLimits` of fleet/site/broker_config.py, where this tree has it); `default`, none (Mosquitto's
    defaults: 1,000 queued and 20 in flight per client)."""
    if mode == "default":
        return []
    try:
        from edgefleet.fleet.site.broker_config import BrokerLimits
    except ImportError:  # a tree from before the broker was sized: its shipped configuration had no limits
        return []
    limits = BrokerLimits(nodes=n)
    return [
        f"max_queued_messages {limits.max_queued_messages}",
        f"max_inflight_messages {limits.max_inflight_messages}",
    ]
