"""A plain MQTT 5 requester for the orchestrator's commands topic: the wire, without edgefleet's CLI."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.proto.payloads import CommandResult, parse_payload
from edgefleet.proto.topics import Topics


class CommandClient:
    def __init__(self, port: int, site: str = "lab") -> None:
        self.topics = Topics.for_site(site)
        self.response_topic = self.topics.cli_responses(f"test-{uuid.uuid4().hex[:8]}")
        self._answers: dict[bytes, CommandResult] = {}
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(self.response_topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("command client could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            with self._cond:
                self._answers[bytes(correlation)] = parse_payload(CommandResult, msg.payload)
                self._cond.notify_all()

    def send(self, payload: bytes) -> bytes:
        """Publish a raw request; returns its correlation data."""
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
