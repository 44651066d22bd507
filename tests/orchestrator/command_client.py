"""A plain MQTT 5 requester for the orchestrator's commands topic: the wire, without edgefleet's CLI.

A payload that is a valid command is signed as the harness operator on its way (the site requires
signed commands); anything else goes out as it is, to meet the orchestrator's parser."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.orchestrator.runtime import Orchestrator, build_orchestrator
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult, PayloadError, parse_payload
from edgefleet.proto.signing import load_operator_key, sign_command
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.mqtt_support import Mosquitto


class CommandClient:
    def __init__(self, broker: Mosquitto, site: str = "lab", sign: bool = True) -> None:
        self.topics, self.site, self.broker, self.sign = Topics.for_site(site), site, broker, sign
        self.response_topic = self.topics.cli_responses(f"test-{uuid.uuid4().hex[:8]}")
        self._answers: dict[bytes, CommandResult] = {}
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = broker.client()
        self.client.on_connect = lambda c, *_: c.subscribe(self.response_topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("command client could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            with self._cond:
                self._answers[bytes(correlation)] = parse_payload(CommandResult, msg.payload)
                self._cond.notify_all()

    def _signed(self, payload: bytes) -> bytes:
        if self.broker.insecure or not self.sign:
            return payload
        try:
            cmd = parse_payload(Command, payload)
        except PayloadError:
            return payload
        harness = site_identity.site().harness_dir
        key = load_operator_key(harness / "client.key")
        return sign_command(cmd, self.site, site_identity.HARNESS, key).dumps()

    def send(self, payload: bytes) -> bytes:
        """Publish a request (signed if it is a valid command); returns its correlation data."""
        payload = self._signed(payload)
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation
        self.client.publish(self.topics.orchestrator_commands(), payload, qos=1, properties=props).wait_for_publish(5)
        return correlation

    def answer(self, correlation: bytes, timeout: float) -> CommandResult | None:
        with self._cond:
            self._cond.wait_for(lambda: correlation in self._answers, timeout)
            return self._answers.pop(correlation, None)

    def call(self, payload: bytes, timeout: float = 10.0) -> CommandResult:
        result = self.answer(self.send(payload), timeout)
        assert result is not None, f"no answer within {timeout} s"
        return result

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def lab_orchestrator(broker: Mosquitto, tmp: Path) -> Iterator[Orchestrator]:
    """An in-process orchestrator of site `lab` on `broker`, its files in `tmp`, subscribed before it is handed out."""
    settings = OrchestratorSettings(
        mqtt_url=broker.url,
        site="lab",
        registry_db=tmp / "registry.db",
        artifact_dir=tmp / "artifacts",
        site_key=tmp / "lab.key",
    )
    o = build_orchestrator(settings)
    o.start()
    try:
        assert o.link.wait_subscribed(10)
        yield o
    finally:
        o.stop()
