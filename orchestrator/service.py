"""The orchestrator: keeps the registry from what nodes publish and publishes desired state.

Operator commands arrive on the commands topic as MQTT 5 requests (response topic and
correlation data) and are answered there. Desired state is retained per target with a
generation that only grows, so nodes converge whenever they (re)connect.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.orchestrator.adapter_commands import AdapterCommands
from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.chunk_sender import ChunkSender
from edgefleet.orchestrator.desired_edits import CommandError, remove_entry
from edgefleet.orchestrator.registry import Registry
from edgefleet.orchestrator.rule_commands import RULE_OPS, RuleCommands
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.plumbing.mqtt_link import LastWill, MqttLink
from edgefleet.proto.payloads import (
    Command,
    CommandResult,
    DesiredState,
    ErrorReport,
    NodeStatus,
    OrchestratorStatus,
    P,
    PayloadError,
    ReportedState,
    Target,
    Telemetry,
    parse_payload,
)
from edgefleet.proto.templates import TemplateError, compile_template
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator")
SOURCE = "orchestrator"


ADAPTER_OPS = frozenset({"upload-chunk", "push-adapter", "rm-adapter", "adapters", "push-knowledge", "rm-knowledge"})


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = Topics.for_site(settings.site, settings.topic_root)
        self._lock = threading.Lock()  # commands and desired-state echoes
        t = self.topics
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=f"orchestrator-{settings.site}",
            **settings.mqtt_link_options(),
            will=LastWill(t.orchestrator_status(), OrchestratorStatus(state="offline").dumps()),
            birth=self._birth,
        )
        self.store = ArtifactStore(settings.artifact_dir)
        self.sender = ChunkSender(self.link, t, self.store.read_chunk, settings.artifact_chunk_interval_ms / 1000)
        self.adapters = AdapterCommands(
            self.store,
            registry,
            self.link,
            t,
            self.sender,
            settings.site_key_path(),
            settings.artifact_chunk_bytes,
            self._publish_desired,
            self._error,
        )
        self.rules = RuleCommands(registry, self._publish_desired)
        self.link.subscribe(t.all_node_status(), self._on_status)
        self.link.subscribe(t.all_node_reported(), self._on_reported)
        self.link.subscribe(t.all_node_telemetry(), self._on_telemetry, qos=0)
        self.link.subscribe(t.all_desired(), self._on_desired)
        self.link.subscribe(t.orchestrator_commands(), self._on_command)
        self.link.subscribe(t.artifact_chunk_requests(), self.adapters.on_chunk_request)

    def _birth(self) -> list[tuple[str, bytes]]:
        online = (self.topics.orchestrator_status(), OrchestratorStatus(state="online").dumps())
        return [online, *self.adapters.retained_manifests()]

    def start(self) -> None:
        self.sender.start()
        self.link.start()

    def stop(self) -> None:
        self.sender.stop()
        self.link.stop(final=[(self.topics.orchestrator_status(), OrchestratorStatus(state="offline").dumps())])

    # -- what nodes publish ---------------------------------------------------------------------------
    def _error(self, topic: str, code: str, message: str) -> None:
        log.warning("input refused", extra={"topic": topic, "code": code, "reason": message})
        report = ErrorReport(source=SOURCE, code=code, message=message, topic=topic)
        self.link.publish(self.topics.errors(SOURCE), report.dumps())

    def _parse(self, msg: mqtt.MQTTMessage, model: type[P]) -> P | None:
        """The payload as `model`, or None: empty (a cleared retained message) or refused with a reason."""
        if not msg.payload:
            return None
        try:
            return parse_payload(model, msg.payload)
        except PayloadError as e:
            self._error(msg.topic, "invalid_payload", str(e))
            return None

    def _from_node(self, msg: mqtt.MQTTMessage, kind: str, payload_node: str) -> bool:
        """A node speaks only for itself: the payload's node id must be the topic's."""
        node_id = self.topics.node_of(msg.topic, kind)
        if node_id != payload_node:
            self._error(msg.topic, "wrong_node", f"{kind} of {payload_node!r} on the topic of {node_id!r}")
            return False
        return True

    def _on_status(self, msg: mqtt.MQTTMessage) -> None:
        status = self._parse(msg, NodeStatus)
        if status is not None and self._from_node(msg, "status", status.node_id):
            self.registry.record_status(status)
            log.info("node status", extra={"node": status.node_id, "state": status.state})

    def _on_reported(self, msg: mqtt.MQTTMessage) -> None:
        rep = self._parse(msg, ReportedState)
        if rep is not None and self._from_node(msg, "reported", rep.node_id):
            self.registry.record_reported(rep)

    def _on_telemetry(self, msg: mqtt.MQTTMessage) -> None:
        t = self._parse(msg, Telemetry)
        if t is not None and self._from_node(msg, "telemetry", t.node_id):
            self.registry.record_telemetry(t)

    def _on_desired(self, msg: mqtt.MQTTMessage) -> None:
        """Retained desired state (ours, echoed or from before a restart) rebuilds the registry."""
        doc = self._parse(msg, DesiredState)
        if doc is None:
            return
        if doc.site == self.settings.site and self.topics.desired_target(msg.topic) == (
            doc.target.kind,
            doc.target.name,
        ):
            with self._lock:
                self.registry.record_desired(doc)

    # -- operator commands ------------------------------------------------------------------------------
    def _on_command(self, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        try:
            cmd = parse_payload(Command, msg.payload)
            with self._lock:
                result = self._run(cmd)
        except (PayloadError, CommandError, TemplateError) as e:
            self._error(msg.topic, "command_refused", str(e))
            result = CommandResult(ok=False, message=str(e))
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                out.CorrelationData = correlation
            self.link.publish(response_topic, result.dumps(), qos=1, properties=out)

    def _target(self, spec: str) -> Target:
        kind, _, name = spec.partition(":") if ":" in spec else ("", "", spec)
        if not name or not valid_name(name):
            raise CommandError(f"target {spec!r} is not a valid node or group name")
        if kind not in ("", "node", "group"):
            raise CommandError(f"target kind {kind!r} must be node or group")
        if not kind:
            kind = "node" if name in self.registry.node_ids() else "group"
        return Target.model_validate({"kind": kind, "name": name})

    def _publish_desired(self, target: Target, current: DesiredState | None, changes: dict[str, Any]) -> DesiredState:
        """The next generation of `target`'s desired state: `current` with `changes` (templates, adapters)."""
        renewed = {"v", "site", "target", "generation", "ts"}  # set again below
        fields: dict[str, Any] = current.model_dump(exclude=renewed) if current else {}
        fields.update(changes)
        doc = DesiredState(
            site=self.settings.site,
            target=target,
            generation=(current.generation if current else 0) + 1,
            **fields,
        )
        self.registry.record_desired(doc)
        topic = (
            self.topics.desired_node(target.name) if target.kind == "node" else self.topics.desired_group(target.name)
        )
        self.link.publish(topic, doc.dumps(), qos=1, retain=True)
        log.info("desired state published", extra={"target": target.key, "generation": doc.generation})
        return doc

    def _run(self, cmd: Command) -> CommandResult:
        if cmd.op == "status":
            return CommandResult(ok=True, data={"nodes": [r.as_dict() for r in self.registry.rows()]})
        if cmd.op in ADAPTER_OPS:
            return self.adapters.run(cmd, self._target)
        if cmd.op in RULE_OPS:
            return self.rules.run(cmd, self._target)
        target = self._target(cmd.target)
        current = self.registry.desired(target.key)
        templates = dict(current.templates) if current else {}
        if cmd.op == "push-template":
            if cmd.template is None:
                raise CommandError("push-template needs a template")
            compile_template(cmd.template)
            templates[cmd.template.name] = cmd.template
            doc = self._publish_desired(target, current, {"templates": templates})
            return CommandResult(
                ok=True,
                message=f"template {cmd.template.name}@{cmd.template.version} pushed to {target.key}, "
                f"generation {doc.generation}",
                data={"generation": doc.generation, "target": target.key},
            )
        return remove_entry(self._publish_desired, target, current, "templates", cmd.name, "template")
