"""Talks to the site orchestrator over MQTT 5 request/response (response topic + correlation data)."""

from __future__ import annotations

import uuid
from types import TracebackType

from edgefleet.fleet.settings import FleetSettings
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import NoAnswer, RpcClient
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
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=client_id,
            **settings.mqtt_link_options(),
        )
        self.rpc = RpcClient(self.link, self.response_topic)
        self.link.start()
        if not (self.link.wait_connected(connect_timeout) and self.rpc.subscribe(connect_timeout)):
            self.link.stop()
            raise OrchestratorUnreachable(f"cannot reach the broker at {settings.mqtt_url}")

    def call(self, command: Command, timeout: float) -> CommandResult:
        try:
            answer = self.rpc.call(self.topics.orchestrator_commands(), command.dumps(), timeout)
        except NoAnswer as e:
            raise OrchestratorUnreachable(
                f"no answer from the orchestrator of site {self.settings.site!r} within {timeout:.0f} s: "
                f"is edgefleet-orchestrator running?"
            ) from e
        try:
            return parse_payload(CommandResult, answer)
        except PayloadError as e:
            return CommandResult(ok=False, message=f"unreadable answer from the orchestrator: {e}")

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
