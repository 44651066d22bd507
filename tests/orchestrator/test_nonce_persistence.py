"""Replay protection survives a restart: the nonces of accepted signed commands are in SQLite.

Issue 22: nonces were kept in memory only, so a signed command replayed after an orchestrator
restart (within the ±120 s window) was obeyed again. Here a real orchestrator process on a real
Mosquitto trusts the operators of a real site PKI; it runs a signed command, is killed with
SIGKILL (no shutdown path: the nonce must have been committed before the command ran), restarts on
the same registry, and is sent the identical signed bytes again: refused, `replayed`.
The store itself is exercised on a real SQLite file: reopened, it still refuses what it saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet.site.pki import SitePki
from edgefleet.orchestrator.command_auth import NonceCache
from edgefleet.orchestrator.nonce_store import NonceStore
from edgefleet.proto.commands import Command
from edgefleet.proto.signing import load_operator_key, sign_command
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher
from tests.orchestrator.command_client import CommandClient

TOPICS = Topics.for_site("lab")
NOW = 1_700_000_000.0


def test_a_reopened_store_refuses_the_nonces_it_recorded(tmp_path: Path) -> None:
    path = tmp_path / "registry.nonces.db"
    first = NonceCache(window_s=120, store=NonceStore(path))
    assert first.add("alice\0n1", NOW, NOW)
    assert not first.add("alice\0n1", NOW, NOW + 1)
    again = NonceCache(window_s=120, store=NonceStore(path))  # a restarted orchestrator
    assert not again.add("alice\0n1", NOW, NOW + 2), "a nonce recorded before the restart was accepted again"
    assert again.add("alice\0n2", NOW + 2, NOW + 2)
    # past the window a nonce is forgotten (its command is refused as stale first) and its row pruned
    assert again.add("alice\0n3", NOW + 200, NOW + 200)
    assert len(NonceStore(path)) == 1


def test_a_reopened_store_keeps_the_floor_of_a_full_cache(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    c = NonceCache(window_s=120, max_entries=2, store=NonceStore(path))
    for i, key in enumerate("abc"):
        assert c.add(key, NOW + i, NOW + i)
    assert not c.add("x", NOW, NOW + 3), "at or before the floor: cannot be told from a replay"
    reopened = NonceCache(window_s=120, max_entries=2, store=NonceStore(path))
    assert not reopened.add("x", NOW, NOW + 3), "the floor was lost in the restart"
    assert not reopened.add("c", NOW + 2, NOW + 3)
    assert reopened.add("d", NOW + 3, NOW + 3)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("nonce-restart")
    pki = SitePki(tmp / "pki")
    pki.init("lab", ["localhost"])
    pki.issue("alice", "operator")
    broker = Mosquitto(tmp)
    watcher = Watcher(broker, TOPICS.orchestrator_status())
    orch = Orchestrator(
        tmp, broker, env={"EDGEFLEET_REQUIRE_SIGNED_COMMANDS": "1", "EDGEFLEET_OPERATOR_KEYS": str(pki.dir)}
    )
    client = CommandClient(broker, sign=False)  # sends exactly the bytes the test signed
    try:
        yield {"pki": pki, "broker": broker, "orch": orch, "client": client, "watcher": watcher}
    finally:
        watcher.close()
        client.close()
        orch.stop()
        broker.stop()


def _online_count(watcher: Watcher) -> int:
    return sum(1 for m in watcher.json() if m.get("state") == "online")


def test_a_signed_command_replayed_after_a_kill_and_restart_is_refused(site: dict[str, object]) -> None:
    pki, orch, client, watcher = site["pki"], site["orch"], site["client"], site["watcher"]
    assert isinstance(pki, SitePki) and isinstance(orch, Orchestrator)
    assert isinstance(client, CommandClient) and isinstance(watcher, Watcher)
    assert wait_for(lambda: _online_count(watcher) >= 1, timeout=20), orch.log_path.read_text()[-2000:]

    key = load_operator_key(pki.bundle_dir("alice") / "client.key")
    wire = sign_command(Command(op="status"), "lab", "alice", key).dumps()
    first = client.call(wire)
    assert first.ok, first

    assert orch.proc is not None
    orch.proc.kill()  # SIGKILL: nothing is flushed or closed on the way out
    orch.proc.wait()
    assert wait_for(lambda: watcher.json() and watcher.json()[-1].get("state") == "offline", timeout=20)
    orch.start()
    assert wait_for(lambda: _online_count(watcher) >= 2, timeout=30), orch.log_path.read_text()[-2000:]

    again = client.call(wire)  # the same signed bytes, within the window, to the new process
    assert not again.ok and again.code == "replayed" and again.data == {}, again
    assert "already received" in again.message, again.message
    fresh = client.call(sign_command(Command(op="status"), "lab", "alice", key).dumps())
    assert fresh.ok, fresh  # a new signature still runs
