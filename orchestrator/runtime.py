"""Assembles the orchestrator: registry, fleet view, MQTT link, ingest, command table, artifact parts.

```
MQTT link ─> ingest queue ─> ingest thread (batches) ─> registry (SQLite) + fleet view (memory)
         ─> command endpoint ─> worker thread ─> command table ─> handlers ─> desired state, manifests,
                                                                                API keys
         ─> chunk requests ─> chunk sender ─> MQTT link
```
The MQTT session is persistent (`SESSION_EXPIRY_S`): while the orchestrator is busy or restarting,
the broker keeps what nodes publish for it (up to its per-client queue limit, see `broker-config
--nodes`). The front door (gRPC and OpenAI HTTP for the whole site, see `front_door/`) runs on its own thread
and event loop, reading the fleet view; it starts after the MQTT link and stops first.
`build_orchestrator` builds every part (nothing connects yet); `start` and `stop` run them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.orchestrator.adapter_commands import AdapterCommands
from edgefleet.orchestrator.agent_commands import AgentCommands
from edgefleet.orchestrator.agent_runs import AgentRunIngest, AgentRunStore
from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.catalogue_commands import CatalogueCommands
from edgefleet.orchestrator.chunk_requests import ChunkRequests
from edgefleet.orchestrator.chunk_sender import ChunkSender
from edgefleet.orchestrator.command_auth import CommandAuth, OperatorKeys
from edgefleet.orchestrator.command_endpoint import MqttCommandEndpoint
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.crl_publisher import CrlPublisher
from edgefleet.orchestrator.desired_edits import DesiredSigner, DesiredStatePublisher
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.front_door.server import FrontDoor
from edgefleet.orchestrator.group_commands import AssignmentIngest, GroupCommands
from edgefleet.orchestrator.group_policies import GroupPolicies
from edgefleet.orchestrator.history_commands import HistoryCommands
from edgefleet.orchestrator.ingest import Ingest, StatusHealer
from edgefleet.orchestrator.ingest_queue import IngestQueue
from edgefleet.orchestrator.key_commands import KeyCommands
from edgefleet.orchestrator.model_commands import ModelCommands
from edgefleet.orchestrator.nonce_store import NonceStore
from edgefleet.orchestrator.registry import Registry, open_registry
from edgefleet.orchestrator.rollout_commands import RolloutCommands
from edgefleet.orchestrator.rollouts.driver import RolloutDriver
from edgefleet.orchestrator.rollouts.evaluation import EvaluationRunner
from edgefleet.orchestrator.rollouts.manifests import manifest_publisher
from edgefleet.orchestrator.rollouts.push_guard import PushGuard
from edgefleet.orchestrator.rollouts.store import RolloutStore, rollouts_path
from edgefleet.orchestrator.rule_commands import RuleCommands
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.orchestrator.site_commands import SiteCommands
from edgefleet.orchestrator.telemetry_history import TelemetryHistory
from edgefleet.plumbing.mqtt_link import Handler, LastWill, MqttLink
from edgefleet.proto.commands import COMMAND_OPS
from edgefleet.proto.payloads import OrchestratorStatus
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.orchestrator")

SESSION_EXPIRY_S = 3600  # the broker keeps the orchestrator's session (and queues for it) this long after it left


def node_groups(view: FleetView, registry: Registry) -> Callable[[str], set[str]]:
    """node id → its groups now: those its status names (fleet view), and those it was assigned (registry)."""

    def groups(node_id: str) -> set[str]:
        snap = view.snapshot().node(node_id)
        assigned = registry.assignment(node_id)
        return {*(snap.groups if snap else ()), *(assigned.groups if assigned else ())}

    return groups


def _on(handle: Callable[[str, bytes], None]) -> Handler:
    """An MQTT handler that hands (topic, payload) to `handle`."""
    return lambda msg: handle(msg.topic, bytes(msg.payload))


@dataclass
class Orchestrator:
    settings: OrchestratorSettings
    topics: Topics
    registry: Registry
    view: FleetView
    link: MqttLink
    store: ArtifactStore
    sender: ChunkSender
    table: CommandTable
    commands: MqttCommandEndpoint
    adapters: AdapterCommands
    front_door: FrontDoor
    keys: KeyCommands | None = None  # the API-key commands (their database is opened at the first one)
    crl: CrlPublisher | None = None  # the site CRL, retained for the nodes
    ingest: IngestQueue | None = None  # what nodes publish, applied in batches on its own thread
    models: ModelCommands | None = None  # base models: push-model, rm-model, and their manifests per scope
    rollouts: RolloutDriver | None = None  # releases in waves (orchestrator/rollouts/), driven on their own thread

    def start(self) -> None:
        if self.ingest is not None:
            self.ingest.start()
        self.sender.start()
        self.link.start()
        self.front_door.start()
        if self.crl is not None:
            self.crl.start()
        if self.rollouts is not None:
            self.rollouts.start()  # after the front door: its evaluations go through it

    def stop(self) -> None:
        if self.rollouts is not None:
            self.rollouts.stop()
        if self.crl is not None:
            self.crl.stop()
        self.front_door.stop()
        self.commands.stop()
        if self.keys is not None:
            self.keys.close()
        self.sender.stop()
        offline = (self.topics.orchestrator_status(), OrchestratorStatus(state="offline").dumps())
        self.link.stop(final=[offline])
        if self.ingest is not None:
            self.ingest.stop()  # what arrived before the link closed is applied


def build_command_table(
    registry: Registry,
    publisher: DesiredStatePublisher,
    adapters: AdapterCommands,
    history: TelemetryHistory,
    groups: GroupCommands,
    keys: KeyCommands,
    catalogue: CatalogueCommands,
    agents: AgentCommands,
    models: ModelCommands | None = None,
    rollouts: RolloutCommands | None = None,
) -> CommandTable:
    """One handler per op of `Command` (proto/commands.py), checked complete."""
    table = CommandTable()
    SiteCommands(registry, publisher).register(table)
    RuleCommands(registry, publisher).register(table)
    catalogue.register(table)
    agents.register(table)
    adapters.register(table)
    if models is not None:
        models.register(table)
    if rollouts is not None:
        rollouts.register(table)
    HistoryCommands(history).register(table)
    groups.register(table)
    keys.register(table)
    if table.ops != COMMAND_OPS:
        raise RuntimeError(f"command table incomplete: no handler for {sorted(COMMAND_OPS - table.ops)}")
    return table


def build_orchestrator(settings: OrchestratorSettings, registry: Registry | None = None) -> Orchestrator:
    """Every part, wired; nothing connects until `start`."""
    registry = registry or Registry(open_registry(settings.registry_db))
    topics = Topics.for_site(settings.site, settings.topic_root)
    view = FleetView()
    view.rebuild(registry.node_records(), registry.all_desired())

    def birth() -> list[tuple[str, bytes]]:
        """Published (retained) on every connect: `online`, and every manifest under each target it was
        pushed to, so a broker that lost them heals."""
        online = (topics.orchestrator_status(), OrchestratorStatus(state="online").dumps())
        return [online, *adapters.manifest_messages(), *models.manifest_messages()]

    link = MqttLink(
        settings.mqtt_url,
        client_id=f"orchestrator-{settings.site}",  # fixed: a restart resumes its persistent session
        **settings.mqtt_link_options(),
        session_expiry_s=SESSION_EXPIRY_S,
        will=LastWill(topics.orchestrator_status(), OrchestratorStatus(state="offline").dumps()),
        birth=birth,
    )
    errors = ErrorReporter(topics, lambda topic, payload: link.publish(topic, payload, qos=1))
    store = ArtifactStore(settings.artifact_dir)
    sender = ChunkSender(link, topics, store.read_chunk, settings.artifact_chunk_interval_ms / 1000, errors)

    def publish_retained(topic: str, payload: bytes) -> object:
        return link.publish(topic, payload, qos=1, retain=True)

    signer = DesiredSigner(settings.site_key_path())  # signs desired state, verifies its echoes
    publisher = DesiredStatePublisher(settings.site, topics, registry, view, publish_retained, signer)
    adapters = AdapterCommands(
        store,
        registry,
        settings.site_key_path(),
        settings.artifact_chunk_bytes,
        publisher,
        publish_retained,
        lambda sha256: sender.sent.get(sha256, 0),
        topics,
    )
    models = ModelCommands(
        store,
        registry,
        adapters.site_key,
        settings.artifact_chunk_bytes,
        settings.max_model_bytes,
        publisher,
        publish_retained,
        topics,
    )
    # the console's plots: telemetry folded into per-minute buckets, in a file beside the registry
    history = TelemetryHistory(settings.registry_db.with_suffix(".history.db"))
    policies = GroupPolicies(registry)  # a group that requires rollouts takes no direct push
    group_commands = GroupCommands(settings.site, topics, registry, publish_retained, signer, policies)
    keys = KeyCommands(settings.api_keys_path())
    # site tools and agent rules (desired state), and the agent runs nodes report (orchestrator/agent_runs.py)
    catalogue = CatalogueCommands(registry, publisher, settings.actuator_filters())
    agent_runs = AgentRunStore(
        registry, on_forget=lambda node, run: publish_retained(topics.agent_decisions(node, run), b"")
    )
    agents = AgentCommands(settings.site, topics, agent_runs, publish_retained, signer)
    # releases: waves of node overrides, gated by evaluations sent through the front door (built below)
    rollouts = RolloutDriver(
        RolloutStore(rollouts_path(settings.registry_db)),
        registry,
        view,
        publisher,
        lambda nodes, cases: EvaluationRunner(front_door, settings.rollout_case_timeout_s).run(nodes, cases),
        tick_s=settings.rollout_tick_s,
        on_published=manifest_publisher(adapters, models, topics, publish_retained),
    )
    rollout_commands = RolloutCommands(rollouts)
    table = build_command_table(
        registry, publisher, adapters, history, group_commands, keys, catalogue, agents, models, rollout_commands
    )
    # direct pushes refused to a group that requires rollouts and to a node a rollout is moving; the
    # others run under the driver's lock (orchestrator/rollouts/push_guard.py)
    PushGuard(policies, rollouts).install(table)
    # nonces of accepted signed commands, beside the registry: a replay after a restart is still refused
    nonces = NonceStore(settings.registry_db.with_suffix(".nonces.db"))
    auth = CommandAuth(
        settings.site, OperatorKeys(settings.operator_keys), settings.signed_commands_required(), nonce_store=nonces
    )
    if not settings.signed_commands_required():
        log.warning(
            "OPERATOR COMMANDS ARE NOT AUTHENTICATED: any client that can publish on the broker can command "
            "this site; set EDGEFLEET_REQUIRE_SIGNED_COMMANDS=true (see README, Signed operator commands)"
        )
    endpoint = MqttCommandEndpoint(link, table, errors, auth)
    front_door = FrontDoor(settings, view)
    orch = Orchestrator(
        settings, topics, registry, view, link, store, sender, table, endpoint, adapters, front_door, keys
    )
    orch.models = models
    orch.rollouts = rollouts
    orch.crl = CrlPublisher(None if settings.insecure else settings.tls_crl_file, topics.crl(), link)

    # ingest: the network thread only queues; the ingest thread applies batches (orchestrator/ingest_queue.py)
    queue = IngestQueue(lambda batch: ingest.apply(batch), tick=lambda: ingest.tick())
    on_status = queue.handler("status")  # one handler object: a healing subscription overlaps the wildcard one
    healer = StatusHealer(topics, lambda topic: link.subscribe(topic, on_status), link.unsubscribe)
    runs_ingest = AgentRunIngest(topics, agent_runs, errors, publish_retained)
    ingest = Ingest(
        settings.site, topics, registry, view, errors, history, signer, publish_retained, healer, runs_ingest
    )
    orch.ingest = queue
    chunk_requests = ChunkRequests(store, sender, errors, topics, registry, node_groups(view, registry))
    link.subscribe(topics.all_node_status(), on_status)
    link.subscribe(topics.all_node_reported(), queue.handler("reported"))
    link.subscribe(topics.all_node_telemetry(), queue.handler("telemetry"), qos=0)
    link.subscribe(topics.all_desired(), queue.handler("desired"))
    assignments = AssignmentIngest(settings.site, topics, registry, errors, signer, publish_retained)
    link.subscribe(topics.all_node_assignments(), _on(assignments))
    link.subscribe(topics.all_errors(), queue.handler("error"))
    link.subscribe(topics.all_agent_runs(), queue.handler("agent_run"))
    link.subscribe(topics.orchestrator_commands(), endpoint.on_message)
    link.subscribe(topics.all_artifact_chunk_requests(), _on(chunk_requests.on_request))
    return orch
