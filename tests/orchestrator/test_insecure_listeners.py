"""Insecure listeners keep to 127.0.0.1 unless an address is set, and a set one is warned about (issue 22).

The orchestrator's front door (gRPC, OpenAI HTTP, metrics) and the console: in insecure mode an
unset address binds loopback; an address set explicitly (flag, environment, keyword) is kept and
every start logs a WARNING naming it. Secure mode keeps 0.0.0.0. One real orchestrator process on
a real plaintext Mosquitto shows the warning and the bind it names (/proc/net/tcp).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.proto.topics import Topics
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher
from tests.node.listeners import listening

EXPOSED = "INSECURE listener exposed on"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", os.devnull)
    return monkeypatch


def _listeners(s: OrchestratorSettings) -> tuple[str, str, str]:
    return s.front_door_address, s.openai_address, s.metrics_address


def test_orchestrator_listen_defaults_follow_the_mode(clean_env: pytest.MonkeyPatch) -> None:
    assert _listeners(OrchestratorSettings()) == ("0.0.0.0:50050", "0.0.0.0:8080", "")
    assert _listeners(OrchestratorSettings(insecure=True)) == ("127.0.0.1:50050", "127.0.0.1:8080", "")
    assert OrchestratorSettings(insecure=True).exposed_listeners() == {}
    kept = OrchestratorSettings(insecure=True, front_door_address="0.0.0.0:50050", openai_address="")
    assert _listeners(kept) == ("0.0.0.0:50050", "", "")  # set explicitly: kept; empty: off
    assert kept.exposed_listeners() == {"EDGEFLEET_FRONT_DOOR_ADDRESS": "0.0.0.0:50050"}
    clean_env.setenv("EDGEFLEET_INSECURE", "1")
    clean_env.setenv("EDGEFLEET_OPENAI_ADDRESS", "0.0.0.0:9000")
    clean_env.setenv("EDGEFLEET_METRICS_ADDRESS", "[::]:9100")
    s = OrchestratorSettings()
    assert _listeners(s) == ("127.0.0.1:50050", "0.0.0.0:9000", "[::]:9100")
    assert s.exposed_listeners() == {
        "EDGEFLEET_OPENAI_ADDRESS": "0.0.0.0:9000",
        "EDGEFLEET_METRICS_ADDRESS": "[::]:9100",
    }


def test_console_listen_default_follows_the_mode(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert ConsoleSettings().console_address == "0.0.0.0:8088"
    insecure = ConsoleSettings(insecure=True)
    assert insecure.console_address == "127.0.0.1:8088" and insecure.host_port() == ("127.0.0.1", 8088)
    assert insecure.front_door_address == "127.0.0.1:50050"  # where it connects, unchanged
    log = logging.getLogger("tests.insecure_console")
    with caplog.at_level(logging.WARNING, logger=log.name):
        insecure.warn_if_insecure(log, "the console")
        assert not [r for r in caplog.records if EXPOSED in r.getMessage()]
        exposed = ConsoleSettings(insecure=True, console_address="0.0.0.0:8088")
        assert exposed.console_address == "0.0.0.0:8088"
        exposed.warn_if_insecure(log, "the console")
    said = [r.getMessage() for r in caplog.records if EXPOSED in r.getMessage()]
    assert len(said) == 1 and f"{EXPOSED} 0.0.0.0:8088" in said[0], said


def test_explicit_insecure_addresses_are_warned_about_at_start(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.insecure_orchestrator")
    s = OrchestratorSettings(insecure=True, openai_address="0.0.0.0:8080", metrics_address="127.0.0.1:9100")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert s.may_start(log, "edgefleet-orchestrator", "the orchestrator")
    said = [r.getMessage() for r in caplog.records if EXPOSED in r.getMessage()]
    assert len(said) == 1 and f"{EXPOSED} 0.0.0.0:8080" in said[0], said  # loopback metrics: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):
        OrchestratorSettings().warn_if_insecure(log, "the orchestrator")  # secure: nothing to warn about
    assert not caplog.records


def test_a_real_insecure_orchestrator_warns_about_the_address_it_was_given(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, insecure=True)
    watcher = Watcher(broker, Topics.for_site("lab").orchestrator_status())
    port = free_port()
    orch = Orchestrator(tmp_path, broker, env={"EDGEFLEET_OPENAI_ADDRESS": f"0.0.0.0:{port}"})
    try:
        assert wait_for(lambda: any(m.get("state") == "online" for m in watcher.json()), timeout=20), (
            orch.log_path.read_text()[-2000:]
        )
        assert wait_for(lambda: listening(port) == {"0.0.0.0"}, timeout=10), listening(port)
        assert f"{EXPOSED} 0.0.0.0:{port}" in orch.log_path.read_text()
    finally:
        watcher.close()
        orch.stop()
        broker.stop()
