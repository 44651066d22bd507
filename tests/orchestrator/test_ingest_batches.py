"""No node lost when every node announces itself at once: batch ingest, a persistent session, healing.

A real Mosquitto (its limits sized by `BrokerLimits`, as `broker-config --nodes` writes them) and a
real orchestrator. The bursts come from nodes simulated at the MQTT contract only (proto/topics.py
and proto/payloads.py models, published by one plain paho client, faster than a consumer that
commits each message on its own takes them: issue 23 measured 632 of 1,000 listed, forever).
What a real node does (announce again when the orchestrator comes online) is tested on a real node.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet import identity_commands
from edgefleet.fleet.site.broker_config import BrokerLimits
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, ReportedState, Telemetry
from edgefleet.proto.topics import Topics
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet_status, mosquitto_binary, node_env
from tests.security.tls_support import pki_cli

T = Topics.for_site("lab")
BURST = 1500  # simulated nodes in a burst: 4,500 messages (birth, reported state, telemetry each)
INFO = NodeInfoPayload(profile="x86-dev", groups=["all"], model=ModelRef(name="m", sha256="ab" * 32))


def sized_broker(tmp: Path, nodes: int) -> Mosquitto:
    """A test broker with the queue and in-flight limits `broker-config --nodes` writes for `nodes`."""
    b = Mosquitto(tmp)
    limits = BrokerLimits(nodes)
    extra = f"max_queued_messages {limits.max_queued_messages}\nmax_inflight_messages {limits.max_inflight_messages}\n"
    b.conf.write_text(b.conf.read_text() + extra)
    b.restart()
    return b


class SimulatedNodes:
    """Many nodes at the MQTT contract, from one paho client: retained birth and reported state,
    then telemetry (QoS 0), as a node publishes them when it (re)connects."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = broker.client(f"simulated-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(500)
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert connected.wait(10), "the simulator could not connect"

    def birth(self, node_id: str) -> None:
        status = NodeStatus(node_id=node_id, state="online", info=INFO)
        self.client.publish(T.node_status(node_id), status.dumps(), qos=1, retain=True)

    def reported(self, node_id: str) -> None:
        rep = ReportedState(node_id=node_id, groups=["all"])
        self.client.publish(T.node_reported(node_id), rep.dumps(), qos=1, retain=True)

    def telemetry(self, node_id: str) -> None:
        t = Telemetry(
            node_id=node_id,
            queue_depth=0,
            slots_busy=0,
            slots_total=2,
            slots_available=2,
            tokens_per_second=0,
            temperature_c=None,
            throttled=False,
            shedding=False,
            rss_bytes=1,
        )
        self.client.publish(T.node_telemetry(node_id), t.dumps(), qos=0)

    def announce(self, node_ids: list[str]) -> None:
        for n in node_ids:
            self.birth(n)
            self.reported(n)
            self.telemetry(n)

    def flush(self) -> None:
        """Until the broker has every QoS 1 message published so far (paho sends them in order)."""
        info = self.client.publish(f"{T.root}test/marker", b"", qos=1)
        info.wait_for_publish(60)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SiteUnderTest:
    """A real orchestrator with its metrics page on a free port (the fleet view's counts by state)."""

    def __init__(self, tmp: Path, broker: Mosquitto, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.status = Watcher(broker, T.orchestrator_status())
        tmp.mkdir(parents=True, exist_ok=True)
        self.orch = Orchestrator(
            tmp, broker, env={"EDGEFLEET_METRICS_ADDRESS": f"127.0.0.1:{self.port}", **(env or {})}
        )
        self.wait_started(time.time() - 1)

    def wait_started(self, since: float) -> None:
        """Until this orchestrator said `online` (after its subscriptions: what follows reaches it)."""
        fresh = lambda: any(s["state"] == "online" and s["ts"] >= since for s in self.status.json())  # noqa: E731
        assert wait_for(fresh, timeout=30), self.log()[-3000:]

    def restart(self) -> None:
        since = time.time() - 1
        self.orch.start()
        self.wait_started(since)

    def kill(self) -> None:
        assert self.orch.proc is not None
        self.orch.proc.kill()  # SIGKILL: nothing saved, nothing said but its last will
        self.orch.proc.wait(10)

    def online(self) -> int:
        """Nodes the fleet view lists online (-1: the page does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                page = r.read().decode()
        except OSError:
            return -1
        for line in page.splitlines():
            if line.startswith('edgefleet_fleet_nodes{state="online"}'):
                return int(float(line.split()[-1]))
        return 0

    def listed(self) -> dict[str, str]:
        """node id → state, as the registry (SQLite, read only) lists them."""
        with sqlite3.connect(f"file:{self.orch.db}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT node_id, state FROM nodes").fetchall())

    def log(self) -> str:
        return self.orch.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.status.close()
        self.orch.stop()


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


DROPPED = "Outgoing messages are being dropped for client orchestrator-lab"  # Mosquitto's warning


@pytest.mark.parametrize("limits", ["mosquitto-default", "sized"])
def test_a_burst_of_births_is_listed_whole(tmp_path: Path, limits: str) -> None:
    """1,500 nodes announce at once (4,500 messages), then send telemetry every 2 s: every one is
    listed online, in the fleet view and in the registry. On Mosquitto's default queue (1,000 per
    client) the broker drops part of the burst, and the nodes it dropped are healed from their
    telemetry (before this, 632 of 1,000 were listed, forever); on a broker sized by `BrokerLimits`
    it drops nothing."""
    broker = sized_broker(tmp_path, BURST) if limits == "sized" else Mosquitto(tmp_path)
    site = SiteUnderTest(tmp_path / "orchestrator", broker)
    sims = SimulatedNodes(broker)
    try:
        ids = _ids("burst", BURST)
        started = time.monotonic()
        sims.announce(ids)
        # then telemetry from each node every 2 s (EDGEFLEET_TELEMETRY_INTERVAL_S), their clocks spread
        # as real nodes' are: a quarter of them every 0.5 s
        deadline, tick, quarter = started + 90, 0, BURST // 4
        while site.online() != BURST and time.monotonic() < deadline:
            time.sleep(0.5)
            for n in ids[quarter * (tick % 4) : quarter * (tick % 4 + 1)]:
                sims.telemetry(n)
            tick += 1
        took = time.monotonic() - started
        assert site.online() == BURST, (site.online(), site.log()[-3000:])
        dropped = DROPPED in (broker.dir / "mosquitto.log").read_text(errors="replace")
        print(
            f"{BURST} births ({limits} broker limits) listed online {took:.1f} s after the burst began; "
            f"broker dropped some: {dropped}; healed: {site.log().count('node status read again')}"
        )
        assert site.listed() == dict.fromkeys(ids, "online")
        assert "message handler failed" not in site.log()
        if limits == "sized":
            assert not dropped
    finally:
        sims.close()
        site.close()
        broker.stop()


def test_an_orchestrator_killed_during_the_burst_lists_every_node_after_its_restart(tmp_path: Path) -> None:
    """kill -9 while it ingests the first half; the second half is published while it is down (its
    persistent session keeps them at the broker, the retained births are sent again): after the
    restart all 1,500 are listed."""
    broker = sized_broker(tmp_path, BURST)
    site = SiteUnderTest(tmp_path / "orchestrator", broker)
    sims = SimulatedNodes(broker)
    try:
        ids = _ids("storm", BURST)
        sims.announce(ids[: BURST // 2])
        site.kill()
        sims.announce(ids[BURST // 2 :])
        sims.flush()
        site.restart()
        assert wait_for(lambda: site.online() == BURST, timeout=90), (site.online(), site.log()[-3000:])
        assert site.listed() == dict.fromkeys(ids, "online")
        # the session is resumed, not started clean (Mosquitto logs c0: clean start off)
        assert "as orchestrator-lab (p5, c0" in (broker.dir / "mosquitto.log").read_text(errors="replace")
    finally:
        sims.close()
        site.close()
        broker.stop()


def test_a_node_whose_birth_was_lost_is_healed_by_its_telemetry(tmp_path: Path) -> None:
    """The orchestrator loses a node's birth (fail point `orchestrator.ingest` fails the first message
    it applies); the node goes on sending telemetry; the orchestrator reads its retained status."""
    broker = Mosquitto(tmp_path)
    site = SiteUnderTest(
        tmp_path / "orchestrator", broker, env={"EDGEFLEET_FAILPOINTS": "orchestrator.ingest=raise-once-after:0"}
    )
    sims = SimulatedNodes(broker)
    try:
        sims.birth("lost-1")
        assert wait_for(lambda: "failpoint=orchestrator.ingest" in site.log(), timeout=15), site.log()[-3000:]
        sims.flush()
        assert "lost-1" not in site.listed() and site.online() == 0  # the birth is lost
        deadline = time.monotonic() + 30
        while site.online() != 1 and time.monotonic() < deadline:
            sims.telemetry("lost-1")  # every second, as a node does (EDGEFLEET_TELEMETRY_INTERVAL_S)
            time.sleep(1)
        assert site.online() == 1, site.log()[-3000:]
        assert site.listed() == {"lost-1": "online"}
        assert "node status read again" in site.log()
    finally:
        sims.close()
        site.close()
        broker.stop()


def _statuses(w: Watcher, node_id: str) -> list[dict[str, Any]]:
    return w.on(T.node_status(node_id))


def test_a_real_node_announces_itself_again_when_the_orchestrator_comes_online(tmp_path: Path, start_node) -> None:
    """As Home Assistant discovery re-announces on `homeassistant/status`: an orchestrator that
    missed the birth (it was down, its session expired, the broker dropped it) gets it again."""
    broker = Mosquitto(tmp_path)
    w = Watcher(broker, T.node_status("alpha"))
    try:
        start_node("x86-dev", env=node_env(broker), node_id="alpha")
        assert wait_for(lambda: len(_statuses(w, "alpha")) >= 1, timeout=30)
        before = len(_statuses(w, "alpha"))
        site = SiteUnderTest(tmp_path / "orchestrator", broker)
        try:
            assert wait_for(lambda: len(_statuses(w, "alpha")) > before, timeout=15), "no second announcement"
            again = _statuses(w, "alpha")[-1]
            assert again["state"] == "online" and again["info"]["profile"] == "x86-dev"
            assert wait_for(lambda: fleet_status(broker).get("alpha", {}).get("state") == "online", timeout=15)
        finally:
            site.close()
    finally:
        w.close()
        broker.stop()


def test_broker_limits_follow_the_node_count() -> None:
    small, site = BrokerLimits(10), BrokerLimits(1000, sensors=50)
    assert (small.max_queued_messages, small.max_inflight_messages, small.max_connections) == (1000, 21, 120)
    assert (site.max_queued_messages, site.max_inflight_messages, site.max_connections) == (4000, 120, 2150)
    assert BrokerLimits(10_000).max_inflight_messages == 200


def test_broker_config_sizes_the_broker_for_the_expected_nodes(tmp_path: Path) -> None:
    """`broker-config --nodes 1000` writes the limits (kept for later runs: enroll and revoke
    regenerate it), and Mosquitto starts with the file; a count that is not one is refused by name."""
    port, pki = free_port(), tmp_path / "pki"
    pki_cli(pki, "init-pki", "--port", str(port))
    user = pwd.getpwuid(os.getuid()).pw_name
    pki_cli(pki, "broker-config", "--nodes", "1000", "--bind", "127.0.0.1", "--run-as-user", user)
    pki_cli(pki, "enroll-sensor", "s1")  # regenerates the configuration: the count is kept
    conf = pki / "broker" / "mosquitto.conf"
    lines = conf.read_text().splitlines()
    for line in ("max_queued_messages 4000", "max_inflight_messages 120", "max_connections 2101"):
        assert line in lines, conf.read_text()
    assert lines.index("max_connections 2101") > lines.index(f"listener {port} 127.0.0.1")  # a listener option
    log = tmp_path / "mosquitto.log"
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: "running" in log.read_text() or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(err):
        identity_commands.main(["broker-config", "--dir", str(pki), "--nodes", "many"], out, err)
    assert exit_.value.code == 2 and "--nodes must be a whole number" in err.getvalue()
