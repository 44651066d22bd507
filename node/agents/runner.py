"""The node's agents, wired: desired tools and agent rules in, triggers and decisions from MQTT, runs out.

An MQTT session of its own (persistent, manual acks, like the sensor plane's), subscribed to:
- each sensor-triggered rule's filter (`$share/<group>/…` for a rule pushed to a group, so one
  node of the group runs it): a message is recorded as a run (its trigger message id makes a
  redelivery start nothing new) before it is acknowledged;
- `agents/decisions/<node>/+`: signed ApprovalDecisions (retained), verified with the site keys
  that verify desired state.
A second, clean session follows each `sensor_latest` tool's subscription: the latest readings
(retained ones arrive on subscribe). It is separate so that a copy delivered for a reading never
counts as a trigger.
Runs advance on a pool of EDGEFLEET_AGENTS_MAX_RUNS workers; a run waiting for an operator holds
none. At start, once the broker is there, effects written and not acknowledged are published once
more (same key), then runs left `running` or `waiting` go on. Approvals past their time expire.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.node.agents.bindings import Bindings, SensorReadings
from edgefleet.node.agents.ledger import AgentLedger
from edgefleet.node.agents.loop import AgentLoop
from edgefleet.node.agents.policy import Decision
from edgefleet.node.agents.pool import RunPool
from edgefleet.node.control.faults import NodeFaults, parse_bounded
from edgefleet.node.sensors.messages import MessageError, extract_variables, message_id
from edgefleet.node.sensors.subscriptions import covers
from edgefleet.node.service import NodeService
from edgefleet.node.settings import NodeSettings
from edgefleet.plumbing.mqtt_link import Handler, MqttLink
from edgefleet.plumbing.mqtt_rpc import BadProperties, check_user_properties
from edgefleet.proto.agent_runs import AgentRunReport, ApprovalDecision
from edgefleet.proto.agents import AgentRule, SensorReadBinding, SensorTrigger, ToolSpec, check_catalogue
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import PayloadError
from edgefleet.proto.rules import RuleSpec, shared_filter, topic_matches
from edgefleet.proto.signing import KeyRing, SignatureError
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node.agents")

EffectiveAgent = tuple[AgentRule, str | None]  # the rule and the group that shares its triggers (None: own)
RESUME_WAIT_S = 30.0  # at start, runs wait this long for the broker before they go on without it
HOUSEKEEPING_S = 1.0  # how often approvals are checked for expiry and unacknowledged effects sent again


def trigger_rule(rule: AgentRule, trigger: SensorTrigger) -> RuleSpec:
    """The sensor trigger as a sensor rule, so variables come from a message exactly as for sensor rules."""
    return RuleSpec(
        name=rule.name,
        version=rule.version,
        topic_filter=trigger.topic_filter,
        template="agent-goal",
        variables=dict(trigger.variables),
        max_payload_bytes=trigger.max_payload_bytes,
    )


class AgentRunner:
    def __init__(
        self, settings: NodeSettings, service: NodeService, topics: Topics, faults: NodeFaults, keys: KeyRing
    ) -> None:
        assert settings.mqtt_url
        self.settings, self.service, self.topics, self.faults, self.keys = settings, service, topics, faults, keys
        self.node_id = settings.node_id
        self.ledger = AgentLedger(Path(settings.data_dir) / "agents.db")
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=f"node-{settings.site}-{self.node_id}-agents",
            **settings.mqtt_link_options(),
            session_expiry_s=settings.sensor_session_expiry_s,
            manual_ack=True,
            on_handler_error=faults.hook(per_message=True),
        )
        # The latest readings come on a session of their own (clean, retained values on subscribe): a copy
        # of a message delivered for a reading must never count as a trigger (a group's shared trigger
        # would then run on every node of the group).
        self.readings_link = MqttLink(
            settings.mqtt_url,
            client_id=f"node-{settings.site}-{self.node_id}-readings",
            **settings.mqtt_link_options(),
            on_handler_error=faults.hook(per_message=False),
        )
        self.readings = SensorReadings(self.ledger)
        self.bindings = Bindings(
            self.ledger,
            self.readings,
            service.knowledge,
            self._publish_wait,
            self.node_id,
            settings.actuator_filters(),
            settings.grounding_min_relevance,
        )
        self.loop = AgentLoop(service, self.ledger, self.bindings, self.node_id, self._publish_report)
        self.pool = RunPool(self._advance, settings.agents_max_runs)
        self._lock = threading.Lock()
        self._agents: dict[str, EffectiveAgent] = {}
        self._tools: dict[str, ToolSpec] = {}
        self._reads: set[str] = set()
        self._triggers: set[str] = set()
        self._stop = threading.Event()
        self._housekeeping = threading.Thread(target=self._housekeeping_loop, name="edgefleet-agents", daemon=True)
        self.link.subscribe(topics.node_agent_decisions(self.node_id), self._on_decision)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Runs left by the last process go on once the broker is there (or RESUME_WAIT_S passed), after
        the effects they wrote and never saw acknowledged went out once more."""
        self.pool.start()
        self.readings_link.start()
        self.link.start()
        self._housekeeping.start()

    def _resume(self) -> None:
        deadline = time.monotonic() + RESUME_WAIT_S
        while not self._stop.is_set() and not self.link.wait_connected(0.5) and time.monotonic() < deadline:
            pass
        self._resend_effects()
        for run in self.ledger.runs(["running", "waiting"]):
            log.info("agent run resumed", extra={"run": run.id, "rule": run.rule, "state": run.state})
            self.pool.put(run.id)

    def _publish_wait(self, topic: str, payload: bytes) -> bool:
        """QoS 1 and the PUBACK; nothing at all while the broker is away (the effect stays pending, and
        goes out when it is back): a message paho queued offline would go out twice."""
        return self.link.connected.is_set() and self.link.publish_wait(topic, payload, timeout=10.0)

    def stop(self) -> None:
        self._stop.set()
        self._housekeeping.join(5)
        self.pool.stop()
        self.link.stop()
        self.readings_link.stop()
        self.ledger.close()

    # -- desired state ------------------------------------------------------------------------------
    def set_catalogue(self, tools: dict[str, ToolSpec], agents: dict[str, EffectiveAgent]) -> list[str]:
        """Run these rules with these tools from now on; rules the catalogue does not hold together are
        left out, and their problems returned (and reported)."""
        problems = check_catalogue(tools, {n: r for n, (r, _) in agents.items()})
        bad = {p.split(":")[0].removeprefix("agent rule ") for p in problems}
        for p in problems:
            self.faults.report(ErrorCode.INVALID_PAYLOAD, f"agent rule left out: {p}")
        usable = {n: a for n, a in agents.items() if n not in bad}
        reads = {
            t.binding.subscription
            for r, _ in usable.values()
            for t in (tools.get(name) for name in r.tools)
            if t is not None and isinstance(t.binding, SensorReadBinding)
        }
        reads = {f for f in reads if not any(o != f and covers(o, f) for o in reads)}
        triggers = {
            shared_filter(group, r.trigger.topic_filter) if group else r.trigger.topic_filter
            for r, group in usable.values()
            if isinstance(r.trigger, SensorTrigger)
        }
        triggers = {
            f for f in triggers if f.startswith("$share/") or not any(o != f and covers(o, f) for o in triggers)
        }
        with self._lock:
            self._agents, self._tools = usable, dict(tools)
            old_reads, old_triggers = self._reads, self._triggers
            self._reads, self._triggers = reads, triggers
        self._resubscribe(self.readings_link, old_reads, reads, self._on_reading)
        self._resubscribe(self.link, old_triggers, triggers, self._on_trigger)
        if old_reads != reads or old_triggers != triggers:
            log.info(
                "agent subscriptions",
                extra={"triggers": sorted(triggers), "readings": sorted(reads), "agents": sorted(usable)},
            )
        return problems

    @staticmethod
    def _resubscribe(link: MqttLink, old: set[str], new: set[str], handler: Handler) -> None:
        for f in old - new:
            link.unsubscribe(f)
        for f in sorted(new - old):
            link.subscribe_wait(f, handler, timeout=5.0)

    # -- messages in (network threads) --------------------------------------------------------------
    def _on_reading(self, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:  # an empty retained message clears a topic: the last reading stays the latest
            self.readings.put(msg.topic, bytes(msg.payload))

    def _on_trigger(self, msg: mqtt.MQTTMessage) -> None:
        payload, topic = bytes(msg.payload), msg.topic
        with self._lock:
            agents = [
                (r, self._tools)
                for r, _ in self._agents.values()
                if isinstance(r.trigger, SensorTrigger) and topic_matches(r.trigger.topic_filter, topic)
            ]
        if agents:
            try:
                props = check_user_properties(msg)
            except BadProperties:
                props = []
            mid = message_id(topic, payload, props)
            for rule, tools in agents:
                self._trigger(rule, tools, topic, payload, mid)
        self.link.ack(msg)

    def _trigger(self, rule: AgentRule, tools: dict[str, ToolSpec], topic: str, payload: bytes, mid: str) -> None:
        assert isinstance(rule.trigger, SensorTrigger)
        try:
            variables = extract_variables(trigger_rule(rule, rule.trigger), topic, payload)
        except MessageError as e:
            self.faults.report(e.code, f"agent rule {rule.name}: message on {topic[:200]} refused: {e.message}", topic)
            return
        run = self.loop.create(rule, tools, topic, variables, source_key=f"{rule.name}|{topic}|{mid}")
        if run is not None and run.state == "running":
            self.pool.put(run.id)

    def _on_decision(self, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.payload:  # empty: the orchestrator cleared a decision whose run has ended
                self._decision(msg.topic, bytes(msg.payload))
        finally:
            self.link.ack(msg)

    def _decision(self, topic: str, raw: bytes) -> None:
        try:
            d = parse_bounded(ApprovalDecision, raw)
        except PayloadError as e:
            self.faults.report(ErrorCode.INVALID_PAYLOAD, f"approval decision on {topic} refused: {e}", topic)
            return
        if self.keys:
            try:
                self.keys.verify(d)
            except SignatureError as e:
                self.faults.report(e.code, f"approval decision on {topic} refused: {e}", topic)
                return
        if d.site != self.settings.site or d.node_id != self.node_id or topic.rsplit("/", 1)[-1] != d.run_id:
            self.faults.report(
                ErrorCode.WRONG_TARGET,
                f"approval decision for site {d.site!r} node {d.node_id!r} run {d.run_id!r} arrived on {topic}",
                topic,
            )
            return
        decision: Decision = "approved" if d.approve else "denied"
        if self.ledger.decide(d.run_id, d.step, decision, d.operator, d.reason):
            log.info("approval decided", extra={"run": d.run_id, "step": d.step, "decision": decision})
            self.pool.put(d.run_id)

    # -- runs ---------------------------------------------------------------------------------------
    def _advance(self, run_id: str) -> None:
        try:
            self.loop.advance(run_id)
        except Exception as e:
            log.exception("agent run failed", extra={"run": run_id})
            run = self.ledger.run(run_id)
            if run is not None and run.state in ("running", "waiting"):
                run.state, run.reason, run.ended, run.pending = "failed", f"internal error: {e}", time.time(), []
                self.ledger.save(run)

    def _publish_report(self, report: AgentRunReport, rule: AgentRule) -> None:
        payload = report.dumps()
        self.link.publish(self.topics.agent_runs(self.node_id), payload, qos=1)
        if rule.output_topic and report.state not in ("running", "waiting"):
            self.link.publish(rule.output_topic, payload, qos=1)

    def _housekeeping_loop(self) -> None:
        try:
            self._resume()
        except Exception:
            log.exception("resuming agent runs failed")
        while not self._stop.wait(HOUSEKEEPING_S):
            try:
                self._expire()
                self._resend_effects()
            except Exception:
                log.exception("agent housekeeping failed")

    def _expire(self) -> None:
        now = time.time()
        for a in self.ledger.pending_approvals():
            if a.expires_at <= now and self.ledger.decide(a.run_id, a.step, "expired"):
                log.info("approval expired", extra={"run": a.run_id, "step": a.step})
                self.pool.put(a.run_id)

    def _resend_effects(self) -> None:
        """Effects written and never acknowledged (a crash, a broker away): published once more, same key."""
        if not self.link.connected.is_set():
            return
        for effect in self.ledger.effects("pending"):
            if not self.pool.claim(effect.run_id):
                continue  # its run is on a worker: that worker publishes it
            try:
                log.info("unacknowledged action sent again", extra={"key": effect.key, "topic": effect.topic})
                self.bindings.publish(effect)
            finally:
                self.pool.release(effect.run_id)
