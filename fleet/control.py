"""Talks to the site orchestrator over MQTT 5 request/response (response topic + correlation data)."""

from __future__ import annotations

import threading
import uuid
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.fleet.settings import FleetSettings
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.payloads import Command, CommandResult, PayloadError, parse_payload
from edgefleet.proto.topics import Topics


class OrchestratorUnreachable(Exception):
    pass


class OrchestratorSession:
    """One broker connection for several commands (an upload is many)."""

    def __init__(self, settings: FleetSettings, connect_timeout: float = 10.0) -> None:
        self.settings = settings
        self.topics = Topics.for_site(settings.site, settings.topic_root)
        client_id = f"cli-{uuid.uuid4().hex[:10]}"
        self.response_topic = self.topics.cli_responses(client_id)
        self._answers: dict[bytes, CommandResult] = {}
        self._cond = threading.Condition()
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=client_id,
            **settings.mqtt_link_options(),
        )
        self.link.subscribe(self.response_topic, self._on_response)
        self.link.start()
        if not self.link.wait_subscribed(connect_timeout):
            self.link.stop()
            raise OrchestratorUnreachable(f"cannot reach the broker at {settings.mqtt_url}")

    def _on_response(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is None:
            return
        try:
            result = parse_payload(CommandResult, msg.payload)
        except PayloadError as e:
            result = CommandResult(ok=False, message=f"unreadable answer from the orchestrator: {e}")
        with self._cond:
            self._answers[bytes(correlation)] = result
            self._cond.notify_all()

    def call(self, command: Command, timeout: float) -> CommandResult:
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation
        self.link.publish(self.topics.orchestrator_commands(), command.dumps(), qos=1, properties=props)
        with self._cond:
            if not self._cond.wait_for(lambda: correlation in self._answers, timeout):
                raise OrchestratorUnreachable(
                    f"no answer from the orchestrator of site {self.settings.site!r} within {timeout:.0f} s: "
                    f"is edgefleet-orchestrator running?"
                )
            return self._answers.pop(correlation)

    def close(self) -> None:
        self.link.stop()

    def __enter__(self) -> OrchestratorSession:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def request(settings: FleetSettings, command: Command, timeout: float) -> CommandResult:
    """Send one command and wait for its answer."""
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        return s.call(command, timeout)
