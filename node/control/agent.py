"""The node's MQTT agent: birth and will, telemetry, and desired-state reconciliation.

Desired state arrives retained on `desired/node/<id>` and `desired/group/<g>`; on every
(re)connect the broker sends it again, and applying it is idempotent: an older generation is
ignored, the same one changes nothing, a newer one replaces that source's templates in one
transaction. The node then publishes its reported state (retained). Bad input is refused with
a reason on the errors topic and changes nothing.

A node that pins the site's public key(s) (EDGEFLEET_SITE_PUBLIC_KEY) takes only documents the
site signed; what is checked, and how the effective state reaches the node's parts, is in
desired_apply.py. Without a pinned key it takes desired state unverified, and says so once, loudly.

The base model (`DesiredState.model`) comes like an artifact and is switched to by a restart
(control/model_sync.py, node/model_switch.py); the reported state says which model serves.

Groups at run time: a signed assignment on `assign/node/<id>` (checked by `group_assignment.py`)
adds groups to the node's own; the agent then follows the new set of groups without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.node.agents.runner import AgentRunner
from edgefleet.node.control.artifact_sync import ArtifactSync
from edgefleet.node.control.base_models import BaseModels
from edgefleet.node.control.crl_sync import CrlSync
from edgefleet.node.control.desired_apply import DesiredIntake, Refusal, apply_effective
from edgefleet.node.control.desired_store import DesiredStateStore, InstalledArtifacts
from edgefleet.node.control.faults import NodeFaults, parse_bounded
from edgefleet.node.control.group_assignment import AssignmentStore, GroupMembership
from edgefleet.node.control.installers import AdapterInstaller, KnowledgeInstaller
from edgefleet.node.control.model_sync import ModelInstaller, ModelSync
from edgefleet.node.sensors.plane import SensorPlane
from edgefleet.node.service import NodeService
from edgefleet.node.settings import NodeSettings
from edgefleet.plumbing.mqtt_link import LastWill, MqttLink
from edgefleet.proto.payloads import (
    DesiredState,
    ErrorReport,
    ModelRef,
    NodeInfoPayload,
    NodeStatus,
    OrchestratorStatus,
    PayloadError,
    ReportedState,
    Telemetry,
)
from edgefleet.proto.signing import KeyRing, load_public_keys
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node.control")


class ControlAgent:
    def __init__(
        self,
        settings: NodeSettings,
        service: NodeService,
        store: DesiredStateStore,
        site_key: Ed25519PublicKey | None = None,
        sensors: SensorPlane | None = None,
        faults: NodeFaults | None = None,
        desired_keys: KeyRing | None = None,
        agents: AgentRunner | None = None,
        models: BaseModels | None = None,
    ) -> None:
        assert settings.mqtt_url
        self.settings = settings
        # every pinned key (a rotation pins the old and the new one), to verify desired state
        self.keys = desired_keys if desired_keys is not None else KeyRing(load_public_keys(settings.site_key_paths()))
        if self.keys:
            log.info("desired state is verified", extra={"site": settings.site, "key_ids": self.keys.ids})
        else:
            log.warning(
                "desired state is not verified: no site public key pinned; anyone who can publish on the "
                "broker can change this node (set EDGEFLEET_SITE_PUBLIC_KEY)",
                extra={"site": settings.site, "node": settings.node_id},
            )
        self.service = service
        self.store = store
        self.node_id = settings.node_id
        self.topics = Topics.for_site(settings.site, settings.topic_root)
        self.intake = DesiredIntake(settings.site, self.topics, self.keys, store)
        self._lock = threading.RLock()  # _reject runs inside _on_desired's critical section
        self._errors: list[str] = []
        # its own groups (profile, EDGEFLEET_GROUPS), then those the orchestrator assigned (kept in node.db)
        self.membership = GroupMembership(
            settings.site,
            self.node_id,
            service.groups,
            AssignmentStore(store.db, self.node_id),
            self.keys,
            self._reject,
        )
        self.groups = self.membership.effective
        service.set_groups(self.groups)
        self._stop = threading.Event()
        self._telemetry: threading.Thread | None = None
        self._last_tokens = 0
        self.faults = faults or NodeFaults(
            self.node_id,
            self.topics.errors(self.node_id),
            settings.data_dir,
            settings.disk_warn_mb * 1024 * 1024,
            settings.handler_retry_s,
        )
        offline = NodeStatus(node_id=self.node_id, state="offline", reason="connection lost").dumps()
        self.link = MqttLink(
            settings.mqtt_url,
            client_id=f"node-{settings.site}-{self.node_id}",
            **settings.mqtt_link_options(),
            will=LastWill(self.topics.node_status(self.node_id), offline),
            birth=self._birth,
            on_handler_error=self.faults.hook(per_message=False),
        )
        self.faults.bind(lambda topic, payload: self.link.publish(topic, payload, qos=1))
        self.sensors = sensors
        self.agents = agents

        common = {
            "node_id": self.node_id,
            "link": self.link,
            "topics": self.topics,
            "installed": InstalledArtifacts(store.db),
            "data_dir": settings.data_dir,
            "site_key": site_key,
            "report_error": self._report_error,
            "changed": self._publish_reported,
            "window": settings.artifact_window,
            "retry_s": settings.artifact_retry_s,
        }

        def sync(installer: AdapterInstaller | KnowledgeInstaller) -> ArtifactSync:
            s = ArtifactSync(installer=installer, **common)  # type: ignore[arg-type]
            s.load_installed()
            return s

        self.adapters = sync(AdapterInstaller(service.adapter_manager)) if service.adapter_manager else None
        self.knowledge = sync(KnowledgeInstaller(service.knowledge)) if service.knowledge else None
        # set by the runtime: drain and execute again (a model switch)
        self.request_switch: Callable[[str], None] = lambda reason: log.error("no restart hook", extra={"why": reason})
        self.model = (
            ModelSync(
                models=models,
                switch=lambda reason: self.request_switch(reason),
                installer=ModelInstaller(service.profile),
                **common,
            )
            if models is not None
            else None
        )
        if sensors is not None:
            sensors.set_groups(self.groups)
        for artifact_sync in self._syncs:
            artifact_sync.set_groups(self.groups)  # it reads artifacts of its own scope and its groups'
        self.link.subscribe(self.topics.desired_node(self.node_id), self._on_desired)
        self.link.subscribe(self.topics.node_assignment(self.node_id), self._on_assignment)
        self.link.subscribe(self.topics.orchestrator_status(), self._on_orchestrator)
        self.crl = CrlSync.for_settings(settings)  # the site's revocations, checked against the site CA
        if self.crl is not None:
            self.link.subscribe(self.topics.crl(), self.crl.on_message)
        for g in self.groups:
            self.link.subscribe(self.topics.desired_group(g), self._on_desired)
        self._install(self.store.docs())

    @property
    def _syncs(self) -> list[ArtifactSync]:
        return [s for s in (self.adapters, self.knowledge, self.model) if s is not None]

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        for artifact_sync in self._syncs:
            artifact_sync.start()
        if self.sensors is not None:
            self.sensors.start()
        if self.agents is not None:
            self.agents.start()
        self.link.start()
        self.faults.start()
        self._telemetry = threading.Thread(target=self._telemetry_loop, name="edgefleet-telemetry", daemon=True)
        self._telemetry.start()

    def stop(self, failure: str = "", reason: str = "") -> None:
        """Leave the site: the last retained status says `offline` (with `reason`, default "shutdown"),
        or `failed` with the engine's reason."""
        self._stop.set()
        self.faults.stop()
        for artifact_sync in self._syncs:
            artifact_sync.stop()
        if self.sensors is not None:
            self.sensors.stop()
        if self.agents is not None:
            self.agents.stop()
        if failure:
            bye = NodeStatus(node_id=self.node_id, state="failed", reason=failure).dumps()
        else:
            bye = NodeStatus(node_id=self.node_id, state="offline", reason=reason or "shutdown").dumps()
        self.link.stop(final=[(self.topics.node_status(self.node_id), bye)])

    def report_failure(self, reason: str) -> None:
        """The engine died: say so at once (retained), before the process winds down."""
        status = NodeStatus(node_id=self.node_id, state="failed", reason=reason)
        self.link.publish(self.topics.node_status(self.node_id), status.dumps(), qos=1, retain=True)

    # -- presence and telemetry ---------------------------------------------------------------------
    def _online(self) -> bytes:
        s = self.service.status()
        info = NodeInfoPayload(
            profile=s.profile,
            groups=self.groups,
            model=ModelRef(name=s.model.name, quantization=str(s.model_meta["quantization"]), sha256=s.model.sha256),
            grpc_address=self.settings.advertise_address or f"{self.settings.host}:{self.settings.port}",
            versions=s.versions,
            assigned_groups=self.membership.assigned,
            insecure=self.settings.insecure,
        )
        return NodeStatus(node_id=self.node_id, state="online", info=info).dumps()

    def _birth(self) -> list[tuple[str, bytes]]:
        online = self._online()
        for sync in self._syncs:
            sync.on_connect()
        return [
            (self.topics.node_status(self.node_id), online),
            (self.topics.node_reported(self.node_id), self._reported().dumps()),
        ]

    def _on_orchestrator(self, msg: mqtt.MQTTMessage) -> None:
        """The orchestrator just came (back) online (not its retained status, sent on every connect):
        announce again, as Home Assistant discovery does on `homeassistant/status`, so one that lost
        our birth (a restart, a broker that dropped it) has it."""
        try:
            online = not msg.retain and parse_bounded(OrchestratorStatus, msg.payload).state == "online"
        except PayloadError:  # only the orchestrator may write there (ACL): nothing to answer
            return
        if online:
            self.link.publish(self.topics.node_status(self.node_id), self._online(), qos=1, retain=True)
            self._publish_reported()

    # -- groups at run time -------------------------------------------------------------------------
    def _on_assignment(self, msg: mqtt.MQTTMessage) -> None:
        """A new group assignment: subscribe to the new groups, leave the dropped ones, re-install
        the effective desired state, and say so (status and reported state, retained). No restart."""
        with self._lock:
            if not self.membership.accept(msg.topic, msg.payload):
                return
            before, after = self.groups, self.membership.effective
            for g in before:
                if g not in after:
                    self.link.unsubscribe(self.topics.desired_group(g))
            for g in after:
                if g not in before:
                    self.link.subscribe(self.topics.desired_group(g), self._on_desired)
            self.groups = after
            self.service.set_groups(after)  # one assignment: readers see the old list or the new
            for sync in self._syncs:
                sync.set_groups(after)
            if self.sensors is not None:
                self.sensors.set_groups(after)
            self._install(self.store.docs())
            log.info(
                "groups changed",
                extra={"groups": after, "assigned": self.membership.assigned, "generation": self.membership.generation},
            )
        self.link.publish(self.topics.node_status(self.node_id), self._online(), qos=1, retain=True)
        self._publish_reported()

    def _telemetry_loop(self) -> None:
        interval = self.settings.telemetry_interval_s
        while not self._stop.wait(interval):
            free, total, low = self.faults.disk()  # the warning is logged with the broker away too
            if self.service.knowledge is not None and not low:
                self.service.knowledge.store.reserve.restore()
            if not self.link.connected.is_set():
                continue
            s = self.service.status()
            tokens = self.service.engine.tokens_generated
            rate = (tokens - self._last_tokens) / interval
            self._last_tokens = tokens
            t = Telemetry(
                node_id=self.node_id,
                queue_depth=s.queue_depth,
                slots_busy=s.slots_busy,
                slots_total=s.slots_total,
                slots_available=s.slots_available,
                tokens_per_second=round(rate, 1),
                temperature_c=s.thermal.temperature_c if s.thermal.available else None,
                throttled=s.thermal.throttled,
                shedding=s.thermal.shedding,
                rss_bytes=s.rss_bytes,
                disk_free_bytes=free,
                disk_total_bytes=total,
                disk_low=low,
                storage_full=bool(self.sensors is not None and self.sensors.intake.storage_full),
                handler_errors=self.faults.handler_errors,
                **(self.sensors.telemetry() if self.sensors is not None else {}),  # type: ignore[arg-type]
            )
            self.link.publish(self.topics.node_telemetry(self.node_id), t.dumps(), qos=0)

    # -- desired state ------------------------------------------------------------------------------
    def _reported(self) -> ReportedState:
        docs = self.store.docs()
        adapters, transfers = self.adapters.report() if self.adapters is not None else ({}, {})
        knowledge, knowledge_transfers = self.knowledge.report() if self.knowledge is not None else ({}, {})
        model_transfers = self.model.report()[1] if self.model is not None else {}
        generations = {k: d.generation for k, d in docs.items()}
        if self.membership.applied is not None:
            generations[self.membership.applied.key] = self.membership.generation
        return ReportedState(
            node_id=self.node_id,
            generations=generations,
            groups=self.groups,
            templates={name: t.spec.version for name, t in self.service.templates.items()},
            adapters=adapters,
            knowledge=knowledge,
            transfers={**transfers, **knowledge_transfers, **model_transfers},
            errors=[*self._errors, *(self.model.errors() if self.model is not None else [])],
            model=self.service.model_file.name,
        )

    def _publish_reported(self) -> None:
        self.link.publish(self.topics.node_reported(self.node_id), self._reported().dumps(), qos=1, retain=True)

    def _report_error(self, topic: str, code: str, message: str) -> None:
        """Refused artifact input: logged and on the errors topic; the node keeps what it had."""
        log.warning("artifact input refused", extra={"topic": topic, "code": code, "reason": message})
        report = ErrorReport(source=self.node_id, code=code, message=message, topic=topic)
        self.link.publish(self.topics.errors(self.node_id), report.dumps(), qos=1)

    def _reject(self, topic: str, code: str, message: str) -> None:
        log.warning("desired state refused", extra={"topic": topic, "code": code, "reason": message})
        with self._lock:
            self._errors = [*self._errors[-4:], message]
        report = ErrorReport(source=self.node_id, code=code, message=message, topic=topic)
        self.link.publish(self.topics.errors(self.node_id), report.dumps(), qos=1)
        self.link.publish(self.topics.node_reported(self.node_id), self._reported().dumps(), qos=1, retain=True)

    def _on_desired(self, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a cleared retained message: the orchestrator removed this target
            return
        doc = self.intake.arrived(msg.topic, msg.payload)
        if isinstance(doc, Refusal):
            self._reject(msg.topic, doc.code, doc.message)
            return
        with self._lock:
            verdict = self.intake.verdict(doc)
            if isinstance(verdict, Refusal):
                self._reject(msg.topic, verdict.code, verdict.message)
                return
            if verdict == "older":
                return
            if verdict == "apply":
                self.store.save(doc)
                self._install(self.store.docs())
                self._errors = []
                log.info(
                    "desired state applied",
                    extra={"target": doc.target.key, "generation": doc.generation, "templates": sorted(doc.templates)},
                )
        self.link.publish(self.topics.node_reported(self.node_id), self._reported().dumps(), qos=1, retain=True)

    def _install(self, docs: dict[str, DesiredState]) -> None:
        apply_effective(
            docs,
            self.node_id,
            self.groups,
            service=self.service,
            adapters=self.adapters,
            knowledge=self.knowledge,
            model=self.model,
            sensors=self.sensors,
            agents=self.agents,
        )
