"""Talks to the site orchestrator over MQTT 5 request/response (response topic + correlation data)."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.mqtt_link import MqttLink
from edgefleet.proto.payloads import Command, CommandResult, PayloadError, parse_payload
from edgefleet.proto.topics import Topics


class OrchestratorUnreachable(Exception):
    pass


def request(settings: FleetSettings, command: Command, timeout: float) -> CommandResult:
    """Send one command and wait for its answer."""
    topics = Topics.for_site(settings.site, settings.topic_root)
    client_id = f"cli-{uuid.uuid4().hex[:10]}"
    response_topic = topics.cli_responses(client_id)
    correlation = uuid.uuid4().bytes
    answer: list[CommandResult] = []
    done = threading.Event()

    def on_response(msg: mqtt.MQTTMessage) -> None:
        if getattr(msg.properties, "CorrelationData", None) != correlation:
            return
        try:
            answer.append(parse_payload(CommandResult, msg.payload))
        except PayloadError as e:
            answer.append(CommandResult(ok=False, message=f"unreadable answer from the orchestrator: {e}"))
        done.set()

    link = MqttLink(
        settings.mqtt_url,
        client_id=client_id,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        ca_file=settings.mqtt_ca_file,
    )
    link.subscribe(response_topic, on_response)
    link.start()
    try:
        if not link.wait_subscribed(min(timeout, 10.0)):
            raise OrchestratorUnreachable(f"cannot reach the broker at {settings.mqtt_url}")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        link.publish(topics.orchestrator_commands(), command.dumps(), qos=1, properties=props)
        if not done.wait(timeout):
            raise OrchestratorUnreachable(
                f"no answer from the orchestrator of site {settings.site!r} within {timeout:.0f} s: "
                f"is edgefleet-orchestrator running?"
            )
        return answer[0]
    finally:
        link.stop()
