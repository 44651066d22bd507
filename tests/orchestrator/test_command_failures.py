"""Operator commands that fail, end to end: a real Mosquitto and a real orchestrator process.

A command that fails inside the orchestrator (an OSError from its artifact directory) is
answered at once with an error code, never left to time out as if the orchestrator were gone;
and a slow command (a fail point that sleeps) does not hold up what nodes publish.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from pathlib import Path

from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import NodeStatus, Telemetry, UploadChunk
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet
from tests.orchestrator.command_client import CommandClient

TOPICS = Topics.for_site("lab")
ADAPTER = b"GGUF" + bytes(range(256)) * 40  # enough for the CLI to upload it; it never gets further


def started(broker: Mosquitto, tmp: Path, env: dict[str, str] | None = None) -> Orchestrator:
    """An orchestrator process, once it is online (its subscriptions precede its `online` message)."""
    watcher = Watcher(broker, TOPICS.orchestrator_status())
    o = Orchestrator(tmp, broker, env=env)
    try:
        assert wait_for(lambda: any(m.get("state") == "online" for m in watcher.json()), timeout=20), (
            o.log_path.read_text()[-2000:]
        )
    finally:
        watcher.close()
    return o


def test_an_os_error_in_a_command_is_answered_with_internal_not_a_timeout(broker: Mosquitto, tmp_path: Path) -> None:
    sha = hashlib.sha256(ADAPTER).hexdigest()
    uploads = tmp_path / "artifacts" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / sha).write_bytes(b"a file where the upload's directory must go")
    o = started(broker, tmp_path)
    errors = Watcher(broker, TOPICS.errors("orchestrator"))
    client = CommandClient(broker)
    try:
        piece = UploadChunk(
            sha256=sha, size=len(ADAPTER), chunk_bytes=1024, index=0, data=base64.b64encode(ADAPTER[:1024]).decode()
        )
        t0 = time.monotonic()
        result = client.call(Command(op="upload-chunk", upload=piece).dumps(), timeout=10)
        assert time.monotonic() - t0 < 5
        assert not result.ok and result.code == "internal", result
        assert "FileExistsError" in result.message and sha in result.message
        assert wait_for(lambda: any(e["code"] == "internal" for e in errors.json()), timeout=5), errors.json()
        assert wait_for(lambda: "Traceback" in o.log_path.read_text(), timeout=5), "logged with its traceback"

        # the operator's CLI shows the cause, not "is edgefleet-orchestrator running?"
        f = tmp_path / "fix.gguf"
        f.write_bytes(ADAPTER)
        r = fleet(broker, "--timeout", "10", "fleet", "push-adapter", str(f), "--name", "fix", "--version", "1",
                  "--target", "line", "--no-wait")  # fmt: skip
        assert r.returncode != 0 and "FileExistsError" in r.stderr, r.stderr
        assert "running" not in r.stderr

        # and the orchestrator goes on answering
        assert client.call(Command(op="status").dumps()).ok
    finally:
        client.close()
        errors.close()
        o.stop()


def telemetry_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {n: json.loads(d)["queue_depth"] for n, d in conn.execute("SELECT node_id, doc FROM telemetry")}


def test_a_slow_command_does_not_hold_up_telemetry(broker: Mosquitto, tmp_path: Path) -> None:
    o = started(broker, tmp_path, env={"EDGEFLEET_FAILPOINTS": "orchestrator.command=sleep:3000"})
    node = Watcher(broker, TOPICS.node_status("slowpoke-probe"))  # a plain client to publish as a node
    client = CommandClient(broker)
    try:
        node.publish(TOPICS.node_status("kappa"), NodeStatus(node_id="kappa", state="online").dumps())
        correlation = client.send(Command(op="status").dumps())
        # the command is on the worker, asleep in its fail point (which says so in the log)
        assert wait_for(lambda: "failpoint=orchestrator.command" in o.log_path.read_text(), timeout=10), (
            o.log_path.read_text()[-2000:]
        )
        t = Telemetry(
            node_id="kappa",
            queue_depth=7,
            slots_busy=1,
            slots_total=4,
            slots_available=3,
            tokens_per_second=30.0,
            temperature_c=None,
            throttled=False,
            shedding=False,
            rss_bytes=1,
        )
        node.publish(TOPICS.node_telemetry("kappa"), t.dumps())
        assert wait_for(lambda: telemetry_rows(o.db).get("kappa") == 7, timeout=1.5), "ingest waited for the command"
        assert client.answer(correlation, 0) is None, "the command is still running"
        result = client.answer(correlation, 10)
        assert result is not None and result.ok and [n["node_id"] for n in result.data["nodes"]] == ["kappa"]
    finally:
        client.close()
        node.close()
        o.stop()
