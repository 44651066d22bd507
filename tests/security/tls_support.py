"""A real Mosquitto with the generated mutual-TLS configuration and ACL, and paho clients that
connect with certificates from a site PKI (fleet/site/pki.py)."""

from __future__ import annotations

import os
import pwd
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.fleet import identity_commands
from edgefleet.fleet.site.pki import SitePki
from tests.conftest import free_port, wait_for
from tests.mqtt_support import mosquitto_binary


def pki_cli(pki_dir: Path, *args: str, site: str = "lab") -> str:
    """Run a PKI verb in-process, as `edgefleet fleet VERB` does; its output."""
    import io

    out, err = io.StringIO(), io.StringIO()
    rc = identity_commands.main(["--site", site, args[0], "--dir", str(pki_dir), *args[1:]], out, err)
    assert rc == 0, err.getvalue()
    return out.getvalue()


class TlsBroker:
    """init-pki + broker-config into `tmp`, then Mosquitto on a free port with that config."""

    def __init__(self, tmp: Path, sensor_filter: str = "plant/#") -> None:
        self.port = free_port()
        self.pki = SitePki(tmp / "pki")
        self.outputs: list[str] = []
        self.outputs.append(pki_cli(self.pki.dir, "init-pki", "--port", str(self.port)))
        self.outputs.append(
            pki_cli(
                self.pki.dir,
                "broker-config",
                "--bind",
                "127.0.0.1",
                "--sensor-filter",
                sensor_filter,
                "--persistence-dir",
                str(tmp / "mosquitto-data"),
                "--run-as-user",
                pwd.getpwuid(os.getuid()).pw_name,
            )
        )
        (tmp / "mosquitto-data").mkdir(exist_ok=True)
        self.conf = self.pki.dir / "broker" / "mosquitto.conf"
        self.log_path = tmp / "mosquitto.log"
        self.url = f"mqtts://127.0.0.1:{self.port}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while "running" not in self.log_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"mosquitto did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def enroll(self, kind: str, name: str, *extra: str) -> Path:
        self.outputs.append(pki_cli(self.pki.dir, f"enroll-{kind}", name, *extra, "--broker-pid", str(self.proc.pid)))
        return self.pki.bundle_dir(name)

    def revoke(self, name: str) -> None:
        self.outputs.append(pki_cli(self.pki.dir, "revoke", name, "--broker-pid", str(self.proc.pid)))

    def reloads(self) -> int:
        return self.log_path.read_text().count("Reloading config")

    def settle(self, timeout: float = 30) -> None:
        """Wait until the broker has applied the files as they are now: SIGHUPs sent close together
        are coalesced, so send one more and wait for a reload that starts after it was sent (the
        broker logs "Reloading config" as it starts one, and reads the files after that line).
        A SIGHUP that lands while Mosquitto 2.0.11 is still in a reload is dropped (seen in CI: one
        reload for four SIGHUPs, then none), so it is sent again each second until a new reload shows."""
        before = self.reloads()
        deadline = time.monotonic() + timeout
        resend_at = 0.0
        while self.reloads() <= before:
            now = time.monotonic()
            assert now < deadline, "the broker did not reload"
            if now >= resend_at:
                self.proc.send_signal(signal.SIGHUP)
                resend_at = now + 1.0
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class Client:
    """A paho MQTT 5 client with a certificate bundle (or none, or a foreign one)."""

    def __init__(
        self, broker: TlsBroker, bundle: Path | None, client_id: str | None = None, ca: Path | None = None
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.connect_reason: ReasonCode | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed: dict[int, threading.Event] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
        ca_file = ca or (bundle / "ca.crt" if bundle else broker.pki.ca_cert_path)
        if bundle is not None:
            c.tls_set(ca_certs=str(ca_file), certfile=str(bundle / "client.crt"), keyfile=str(bundle / "client.key"))
        else:
            c.tls_set(ca_certs=str(ca_file), cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = lambda _c, _u, mid, _r, _p: self._subscribed.setdefault(mid, threading.Event()).set()
        self.client = c
        try:
            c.connect("127.0.0.1", broker.port, keepalive=10)
            c.loop_start()
            self._connected.wait(5)
        except (OSError, ssl.SSLError) as e:
            self.error = e

    @property
    def connected(self) -> bool:
        return self.error is None and self.connect_reason is not None and not self.connect_reason.is_failure

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connect_reason = reason
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = reason

    def subscribe(self, topic_filter: str) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.setdefault(mid, threading.Event()).wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        """QoS 1 publish; the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks:
            assert time.monotonic() < deadline, "no PUBACK"
            time.sleep(0.01)
        return self.acks[info.mid]

    def receive_marker(self, sender: Client, topic: str) -> None:
        """Wait until everything the broker routed to this client before now has arrived: `sender`
        publishes a marker on `topic` (one this client reads and subscribed to) and it arrives here.
        Mosquitto takes one message at a time and delivers to each subscriber in order, so whatever it
        took before the marker (a publish already acknowledged, a retained message queued on
        subscribe) reached this client before the marker did: "it did not arrive" is then a fact."""
        payload = f"marker {time.monotonic_ns()}".encode()
        assert not sender.publish(topic, payload).is_failure, f"marker refused on {topic}"
        assert wait_for(lambda: self.got(topic, payload), timeout=5), f"the marker on {topic} did not arrive"

    def got(self, topic: str, payload: bytes | None = None) -> bool:
        with self._lock:
            return any(t == topic and (payload is None or p == payload) for t, p in self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        if self.error is None:
            self.client.disconnect()


def https_json(
    url: str, ca: Path, bundle: Path | None = None, body: dict[str, Any] | None = None, token: str | None = None
) -> tuple[int, Any]:
    """(status, body) of an HTTPS request trusting `ca`, showing `bundle`'s certificate (None: none)
    and/or a bearer key; a JSON body parsed, any other returned as text; 0 when the TLS handshake was
    refused (a revoked certificate)."""
    import json
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    if bundle is not None:
        ctx.load_cert_chain(str(bundle / "client.crt"), str(bundle / "client.key"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")

    def parsed(raw: bytes) -> Any:
        text = raw.decode()
        return json.loads(text) if text.startswith("{") else text

    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
            return int(r.status), parsed(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parsed(e.read())
    except (ssl.SSLError, urllib.error.URLError, ConnectionError) as e:
        return 0, {"error": {"message": str(e)}}
