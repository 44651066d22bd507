"""The node's sensor plane: one MQTT session, the ledger, and the pipeline intake → answerer → publisher.

The plane owns the three stages and the typed queues between them (`stages.py`), starts them
last-first and stops them first-first, so no stage puts work on a queue nobody reads. The control
agent hands it the effective rules whenever desired state changes and reads its figures for
telemetry. Ad-hoc inference uses MQTT 5 request/response: a request on the node's (or a group's,
shared) request topic with a response topic and correlation data gets its answer there; it does
not go through the inbox (the requester owns retries), but its answer leaves through the same
publisher as every other message of this session, never from the engine or the network thread.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.node.control.faults import NodeFaults, parse_bounded
from edgefleet.node.engine.types import Event, Failed, Finished, TextDelta
from edgefleet.node.errors import EdgefleetError, code_of
from edgefleet.node.sensors.answerer import Answerer
from edgefleet.node.sensors.intake import SensorIntake
from edgefleet.node.sensors.ledger import SensorLedger
from edgefleet.node.sensors.publisher import Publisher
from edgefleet.node.sensors.stages import AnswererQueue, PublisherQueue, Reply
from edgefleet.node.sensors.stats import SensorStats
from edgefleet.node.sensors.subscriptions import EffectiveRule
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import GenerateInput
from edgefleet.node.settings import NodeSettings
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import BadProperties, BadResponseTarget, check_user_properties, response_target
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import (
    InferenceRequest,
    InferenceResponse,
    PayloadError,
    RuleTelemetry,
)
from edgefleet.proto.rules import shared_filter
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node.sensors")


class SensorPlane:
    def __init__(self, settings: NodeSettings, service: NodeService, topics: Topics, faults: NodeFaults) -> None:
        assert settings.mqtt_url
        self.faults = faults
        self.settings, self.service, self.topics = settings, service, topics
        self.node_id = settings.node_id
        self.ledger = SensorLedger(
            Path(settings.data_dir) / "sensors.db",
            inbox_limit=settings.sensor_inbox_limit,
            outbox_limit=settings.sensor_outbox_limit,
        )
        self.stats = SensorStats()
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=f"node-{settings.site}-{self.node_id}-sensors",
            **settings.mqtt_link_options(),
            session_expiry_s=settings.sensor_session_expiry_s,
            manual_ack=True,
            on_handler_error=faults.hook(per_message=True),
        )
        self.to_answerer: AnswererQueue = queue.Queue()
        self.to_publisher: PublisherQueue = queue.Queue()
        self.intake = SensorIntake(self.link, self.ledger, self.stats, self.to_answerer, report=faults.report)
        self.answerer = Answerer(
            service,
            self.ledger,
            self.stats,
            self.intake.rules,
            topics.results(self.node_id),
            self.to_answerer,
            self.to_publisher,
            max_in_flight=settings.sensor_max_in_flight or service.engine.config.slots,
            max_attempts=settings.sensor_max_attempts,
            report=faults.report,
        )
        self.publisher = Publisher(self.link, self.ledger, self.to_publisher, faults.report)
        self.link.subscribe(topics.node_requests(self.node_id), self._on_request)
        self.groups: list[str] = []
        self.set_groups(service.groups)

    def start(self) -> None:
        """The last stage first, so each stage's next one is taking items; then messages come in."""
        self.publisher.start()
        self.answerer.start()
        self.intake.start()
        self.link.start()

    def stop(self) -> None:
        """The first stage first; the link (the intake's input, the publisher's output) and the ledger last.
        Messages the link still delivers are kept in the inbox and answered at the next start."""
        self.intake.stop()
        self.answerer.stop()
        self.publisher.stop()
        self.link.stop()
        self.ledger.close()

    def set_groups(self, groups: list[str]) -> None:
        """Answer the request topics of these groups (shared with their other nodes), and no others."""
        for g in self.groups:
            if g not in groups:
                self.link.unsubscribe(shared_filter(g, self.topics.group_requests(g)))
        for g in groups:
            if g not in self.groups:
                self.link.subscribe(shared_filter(g, self.topics.group_requests(g)), self._on_request)
        self.groups = list(groups)

    def set_rules(self, rules: dict[str, EffectiveRule]) -> None:
        self.intake.set_rules(rules)

    def telemetry(self) -> dict[str, object]:
        inbox, outbox = self.ledger.depths()
        rules = {
            name: RuleTelemetry(
                messages_in=c.messages_in,
                duplicates=c.duplicates,
                answered=c.answered,
                errors=c.errors,
                latency_p50_ms=None if c.latency_p50_ms is None else round(c.latency_p50_ms, 1),
            )
            for name, c in self.stats.snapshot().items()
        }
        return {"inbox_depth": inbox, "outbox_depth": outbox, "holding": self.intake.holding, "rules": rules}

    # -- ad-hoc requests (network thread; every answer is a `Reply` for the publisher) ----------------------
    def _on_request(self, msg: mqtt.MQTTMessage) -> None:
        """Every refusal here is an error report on the node's errors topic (and an answer where one can go)."""
        self.link.ack(msg)  # a request is answered or refused, never kept: the requester retries
        failpoints.hit("sensors.request")
        try:
            target = response_target(msg)
        except BadResponseTarget as e:
            self.faults.report(ErrorCode.BAD_RESPONSE_TARGET, f"request on {msg.topic} refused: {e}", msg.topic)
            return
        started = time.monotonic()

        def answer(r: InferenceResponse) -> None:  # network or engine thread: hand over only
            self.to_publisher.put(Reply(target, r.dumps(), msg.topic))

        try:
            check_user_properties(msg)
        except BadProperties as e:
            self.faults.report(ErrorCode.BAD_PROPERTIES, f"request on {msg.topic} refused: {e}", msg.topic)
            answer(InferenceResponse(node_id=self.node_id, ok=False, error_code=ErrorCode.BAD_PROPERTIES, error=str(e)))
            return
        try:
            req = parse_bounded(InferenceRequest, msg.payload)
            if bool(req.prompt) == bool(req.template):
                raise PayloadError("set exactly one of prompt or template")
        except PayloadError as e:
            answer(
                InferenceResponse(node_id=self.node_id, ok=False, error_code=ErrorCode.INVALID_PAYLOAD, error=str(e))
            )
            return
        text: list[str] = []

        def sink(event: Event) -> None:  # no tools here: no ToolCallDelta comes
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, Finished):
                u = event.usage
                answer(
                    InferenceResponse(
                        node_id=self.node_id,
                        ok=True,
                        text="".join(text) + event.text_tail,
                        prompt_tokens=u.prompt_tokens,
                        completion_tokens=u.completion_tokens,
                        total_ms=round((time.monotonic() - started) * 1000, 2),
                    )
                )
            elif isinstance(event, Failed):
                answer(
                    InferenceResponse(
                        node_id=self.node_id, ok=False, error_code=code_of(event.error), error=str(event.error)
                    )
                )

        inp = GenerateInput(
            prompt=req.prompt,
            template=req.template,
            variables=req.variables,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            seed=req.seed,
            json_schema=json.dumps(req.json_schema) if req.json_schema else "",
            adapter=req.adapter,
        )
        try:
            self.service.generate(inp, f"mqtt-{secrets.token_hex(6)}", sink, started)
        except EdgefleetError as e:
            answer(InferenceResponse(node_id=self.node_id, ok=False, error_code=code_of(e), error=str(e)))
