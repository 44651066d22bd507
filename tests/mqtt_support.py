"""Real Mosquitto brokers and orchestrator processes for tests, on free ports, cleaned up after."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests import site_identity
from tests.conftest import BIN, free_port
from tests.site_identity import INSECURE_ENV


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run scripts/setup (it installs the Debian package)")
    return found


class Mosquitto:
    """A broker with a generated config and persistence on, so it can be stopped and restarted.

    Secure like the product's: a TLS listener with the test site's broker certificate, client
    certificates required, the certificate's CN as the user name. The ACL side is tested against
    the generated configuration in tests/security; here every site identity may use every topic.
    `insecure=True`: a plaintext anonymous listener (for tests of insecure mode itself)."""

    def __init__(self, tmp: Path, insecure: bool = False) -> None:
        self.dir = tmp / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.insecure = insecure
        self.url = f"{'mqtt' if insecure else 'mqtts'}://127.0.0.1:{self.port}"
        self.conf = self.dir / "mosquitto.conf"
        pki = site_identity.site().pki
        security = (
            "allow_anonymous true\n"
            if insecure
            else f"cafile {pki.ca_cert_path}\ncertfile {pki.server_cert_path}\nkeyfile {pki.server_key_path}\n"
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        )
        self.conf.write_text(
            # `user`: as root, mosquitto would switch to its own user and could not write here.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"listener {self.port} 127.0.0.1\nset_tcp_nodelay true\n{security}persistence true\n"
            f"persistence_location {self.dir}/\nautosave_interval 1\nlog_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def link_options(self) -> dict[str, Any]:
        """MqttLink keyword arguments for this broker (the harness certificate)."""
        if self.insecure:
            return {}
        h = site_identity.site().harness_dir
        return {"ca_file": str(h / "ca.crt"), "cert_file": str(h / "client.crt"), "key_file": str(h / "client.key")}

    def client(self, client_id: str = "") -> mqtt.Client:
        """A paho MQTT 5 client set up for this broker (TLS as the harness operator), not connected."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if not self.insecure:
            site_identity.site().paho_tls(c)
        return c

    def start(self) -> None:
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start:\n{(self.dir / 'mosquitto.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence file
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Orchestrator:
    def __init__(
        self, tmp: Path, broker: Mosquitto, site: str = "lab", db: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.db = db or tmp / "registry.db"
        # The front door's listeners are off unless a test opens them (on free ports of its own).
        self.env = {
            **os.environ,
            **(INSECURE_ENV if getattr(broker, "insecure", False) else site_identity.site().orchestrator_env()),
            "EDGEFLEET_ARTIFACT_DIR": str(tmp / "artifacts"),
            "EDGEFLEET_FRONT_DOOR_ADDRESS": "",
            "EDGEFLEET_OPENAI_ADDRESS": "",
            "EDGEFLEET_METRICS_ADDRESS": "",
            **(env or {}),
        }
        self.log_path = tmp / "orchestrator.log"
        self.broker, self.site = broker, site
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "edgefleet-orchestrator"),
                "serve",
                "--mqtt-url",
                self.broker.url,
                "--site",
                self.site,
                "--registry-db",
                str(self.db),
                "--log-format",
                "text",
            ],
            stdout=log,
            stderr=log,
            env=self.env,
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def node_env(broker: Mosquitto, site: str = "lab", **extra: str) -> dict[str, str]:
    env = {"EDGEFLEET_MQTT_URL": broker.url, "EDGEFLEET_SITE": site, "EDGEFLEET_TELEMETRY_INTERVAL_S": "1"}
    return {**env, **(INSECURE_ENV if broker.insecure else {}), **extra}


def fleet(broker: Mosquitto, *args: str, site: str = "lab", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI as the harness operator (its certificate signs the commands)."""
    env = {**os.environ, "EDGEFLEET_MQTT_URL": broker.url, "EDGEFLEET_SITE": site}
    if broker.insecure:
        env.update(INSECURE_ENV)
    return subprocess.run([str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=timeout, env=env)


def fleet_status(broker: Mosquitto) -> dict[str, dict[str, Any]]:
    r = fleet(broker, "--timeout", "3", "fleet", "status", "--json")
    if r.returncode != 0:
        return {}
    return {n["node_id"]: n for n in json.loads(r.stdout)}


class Watcher:
    """A plain MQTT client that records what arrives on a topic filter."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = broker.client()
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("watcher could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for _, p in self.messages if p]

    def on(self, topic: str, prefix: bool = False) -> list[dict[str, Any]]:
        """The JSON payloads that arrived on `topic` (or under it, with `prefix`), empty ones skipped."""
        with self._lock:
            found = [p for t, p in self.messages if (t.startswith(topic) if prefix else t == topic) and p]
        return [json.loads(p) for p in found]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def init_site_keys(directory: Path, site: str = "lab") -> dict[str, Path]:
    """`edgefleet fleet init-site`: the site's Ed25519 signing key pair, as an operator makes it."""
    r = subprocess.run(
        [str(BIN / "edgefleet"), "fleet", "init-site", "--dir", str(directory)],
        env={**os.environ, "EDGEFLEET_SITE": site},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return {"key": directory / f"{site}.key", "pub": directory / f"{site}.pub"}
