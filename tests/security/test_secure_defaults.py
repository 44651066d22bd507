"""Secure by default: every entry point refuses to run without a site identity, says what to do,
and runs in insecure mode only when told so (EDGEFLEET_INSECURE / --insecure), loudly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto

WARNING = "INSECURE MODE (EDGEFLEET_INSECURE)"


def bare_env(**extra: str) -> dict[str, str]:
    """A shell with no edgefleet identity at all (what a fresh device has before enrollment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return {**env, "EDGEFLEET_CLI_CONFIG": os.devnull, **extra}


def run(*cmd: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_node_without_identity_refuses_to_start_and_says_what_to_do(tmp_path: Path) -> None:
    r = run("edgefleet-node", "serve", "--port", "0", "--data-dir", str(tmp_path), env=bare_env())
    assert r.returncode == 2
    assert "needs a site certificate" in r.stderr and "enroll-node" in r.stderr and "EDGEFLEET_INSECURE" in r.stderr
    # a certificate but a plaintext broker, or no site key to verify desired state: refused too
    from tests import site_identity

    node = site_identity.site().node_env("refused")
    plain = {**node, "EDGEFLEET_MQTT_URL": "mqtt://127.0.0.1:1883"}
    r = run("edgefleet-node", "serve", "--port", "0", "--data-dir", str(tmp_path), env=bare_env(**plain))
    assert r.returncode == 2 and "is plaintext; use mqtts://" in r.stderr, r.stderr
    keyless = {k: v for k, v in node.items() if k != "EDGEFLEET_SITE_PUBLIC_KEY"}
    keyless["EDGEFLEET_MQTT_URL"] = "mqtts://127.0.0.1:8883"
    r = run("edgefleet-node", "serve", "--port", "0", "--data-dir", str(tmp_path), env=bare_env(**keyless))
    assert r.returncode == 2 and "EDGEFLEET_SITE_PUBLIC_KEY" in r.stderr, r.stderr


def test_an_orchestrator_without_identity_or_with_security_turned_off_refuses(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    r = run("edgefleet-orchestrator", "serve", "--registry-db", db, env=bare_env())
    assert r.returncode == 2 and "is plaintext" in r.stderr, r.stderr
    from tests import site_identity

    env = bare_env(**site_identity.site().harness_env(), EDGEFLEET_MQTT_URL="mqtts://127.0.0.1:1")
    for setting, words in (
        ("EDGEFLEET_REQUIRE_SIGNED_COMMANDS", "lets anyone on the broker command the fleet"),
        ("EDGEFLEET_FRONT_DOOR_AUTH", "opens the inference API to anyone"),
    ):
        value = "false" if "SIGNED" in setting else "off"
        r = run("edgefleet-orchestrator", "serve", "--registry-db", db, env={**env, setting: value})
        assert r.returncode == 2 and words in r.stderr and "EDGEFLEET_INSECURE=1" in r.stderr, r.stderr
    r = run("edgefleet-orchestrator", "serve", "--registry-db", db, env={**env, "EDGEFLEET_SITE_KEY": "/nonexistent"})
    assert r.returncode == 2 and "site key" in r.stderr, r.stderr


def test_the_cli_and_the_console_without_identity_refuse(tmp_path: Path) -> None:
    r = run("edgefleet", "--mqtt-url", "mqtts://127.0.0.1:1", "fleet", "status", env=bare_env())
    assert r.returncode == 2 and "client certificate" in r.stderr and "enroll" in r.stderr, r.stderr
    r = run("edgefleet", "--node", "127.0.0.1:1", "node-info", env=bare_env())
    assert r.returncode == 2 and "needs a site certificate" in r.stderr, r.stderr
    env = bare_env(EDGEFLEET_MQTT_URL="mqtts://127.0.0.1:1", EDGEFLEET_CONSOLE_DATA_FILE=str(tmp_path / "c.db"))
    r = run("edgefleet", "console", "--address", f"127.0.0.1:{free_port()}", env=env, timeout=30)
    assert r.returncode == 2 and "console" in r.stderr and "EDGEFLEET_INSECURE" in r.stderr, r.stderr


def test_insecure_mode_runs_plaintext_and_says_so_loudly(tmp_path: Path) -> None:
    """--insecure on the orchestrator and EDGEFLEET_INSECURE=1 on a node: they run, on a plaintext
    anonymous broker and plaintext gRPC, and each logs the warning at start."""
    broker = Mosquitto(tmp_path, insecure=True)
    log_path = tmp_path / "orch.log"
    cmd = [str(BIN / "edgefleet-orchestrator"), "serve", "--insecure", "--mqtt-url", broker.url, "--site", "lab"]
    cmd += ["--registry-db", str(tmp_path / "r.db"), "--front-door-address", "", "--openai-address", ""]
    with log_path.open("wb") as log:
        orch = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=log,
            env=bare_env(EDGEFLEET_LOG_FORMAT="text"),
        )
    node = NodeProcess(tmp_path, env={"EDGEFLEET_INSECURE": "1", "EDGEFLEET_MQTT_URL": broker.url})
    try:
        node.wait_serving()  # over a plaintext channel: NodeProcess follows the node's mode
        assert node.info().node_id == node.node_id
        assert WARNING in node.log()
        assert wait_for(lambda: WARNING in log_path.read_text(errors="replace"), timeout=20)
        assert "OPERATOR COMMANDS ARE NOT AUTHENTICATED" in log_path.read_text(errors="replace")
        assert orch.poll() is None
    finally:
        node.stop()
        orch.send_signal(signal.SIGTERM)
        orch.wait(10)
        broker.stop()


@pytest.mark.parametrize("value", ["1", "true"])
def test_the_switch_is_one_setting_for_every_part(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGEFLEET_INSECURE is the site section's, so node, orchestrator, CLI and console read it alike."""
    from edgefleet.fleet.console.settings import ConsoleSettings
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.node.settings import NodeSettings
    from edgefleet.orchestrator.settings import OrchestratorSettings

    monkeypatch.setenv("EDGEFLEET_INSECURE", value)
    for model in (NodeSettings, OrchestratorSettings, FleetSettings, ConsoleSettings):
        settings = model()
        assert settings.insecure is True, model.__name__
        settings.check_security()  # nothing is required in insecure mode
    orch = OrchestratorSettings()
    assert orch.front_door_auth_mode() == "off" and orch.signed_commands_required() is False
    assert OrchestratorSettings(insecure=False).signed_commands_required() is True  # the README's default: on
