"""Who may do what: one table of grants per identity, read at every API.

An identity's *kind* (orchestrator, node, sensor, operator) and, for operators, its *role*
(viewer, operator, admin) are written into its certificate by the site PKI (subject OU
`edgefleet:<kind>` and, for operators, `edgefleet-role:<role>`), so every service can tell who
calls from the verified certificate alone, offline. An API key is its own identity kind
(`api-key`), with allow-lists kept in the key store.

Everything not granted here is denied: node gRPC methods (`NODE_METHODS`), front-door routes
(`FRONT_DOOR`), operator commands (`COMMAND_ROLE`) and MQTT topics (`MQTT_GRANTS`, from which
the broker ACL is generated). `deny_message` words every refusal the same way, naming the identity
and what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    ORCHESTRATOR = "orchestrator"
    NODE = "node"
    SENSOR = "sensor"
    OPERATOR = "operator"
    API_KEY = "api-key"  # not a certificate: a front-door client holding a key
    UNKNOWN = "unknown"  # a site certificate without an edgefleet kind (issued before roles): no grants


CERT_KINDS = (Kind.ORCHESTRATOR, Kind.NODE, Kind.SENSOR, Kind.OPERATOR)
"""The kinds the site PKI issues certificates for."""


class Role(StrEnum):
    """An operator's role; each includes the ones before it."""

    VIEWER = "viewer"  # reads: status, lists, history, answers
    OPERATOR = "operator"  # changes the fleet: templates, rules, artifacts, groups, knowledge
    ADMIN = "admin"  # who may call: API keys


ROLE_ORDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
DEFAULT_OPERATOR_ROLE = Role.OPERATOR

KIND_OU_PREFIX = "edgefleet:"
ROLE_OU_PREFIX = "edgefleet-role:"


def kind_ou(kind: str) -> str:
    return f"{KIND_OU_PREFIX}{kind}"


def role_ou(role: str) -> str:
    return f"{ROLE_OU_PREFIX}{role}"


@dataclass(frozen=True)
class Principal:
    """A caller as every API sees it: a name, a kind and (operators) a role."""

    name: str
    kind: Kind
    role: Role | None = None

    def __str__(self) -> str:
        if self.kind is Kind.OPERATOR and self.role is not None:
            return f"operator {self.name!r} (role {self.role.value})"
        return f"{self.kind.value} {self.name!r}"

    def has_role(self, needed: Role) -> bool:
        return self.role is not None and ROLE_ORDER.index(self.role) >= ROLE_ORDER.index(needed)


def principal_from_ous(name: str, ous: list[str]) -> Principal:
    """A certificate's subject OUs → its principal (UNKNOWN kind when none names one)."""
    kind, role = Kind.UNKNOWN, None
    for ou in ous:
        if ou.startswith(KIND_OU_PREFIX):
            value = ou[len(KIND_OU_PREFIX) :]
            kind = Kind(value) if value in {k.value for k in CERT_KINDS} else Kind.UNKNOWN
        elif ou.startswith(ROLE_OU_PREFIX):
            value = ou[len(ROLE_OU_PREFIX) :]
            role = Role(value) if value in {r.value for r in Role} else None
    if kind is not Kind.OPERATOR:
        role = None
    elif role is None:
        role = Role.VIEWER  # an operator certificate without a readable role gets the least
    return Principal(name, kind, role)


class Permission(StrEnum):
    GENERATE = "generate"  # Generate, Embed: ask the model
    NODE_INFO = "node-info"  # GetNodeInfo, ListCollections
    KNOWLEDGE_READ = "knowledge-read"  # Retrieve: raw chunks of a collection
    KNOWLEDGE_WRITE = "knowledge-write"  # Ingest, DeleteDocuments
    METRICS = "metrics"  # Prometheus scrape of the front door


@dataclass(frozen=True)
class Grant:
    """What a kind may do; `min_role` applies to operators only."""

    permission: Permission
    min_role: Role = Role.VIEWER


# Node gRPC (edgefleet.v1.Inference served by a node). Sensors and nodes get nothing: a sensor
# speaks MQTT only, and a node never calls another node.
NODE_GRANTS: dict[Kind, tuple[Grant, ...]] = {
    Kind.ORCHESTRATOR: tuple(
        Grant(p)
        for p in (Permission.GENERATE, Permission.NODE_INFO, Permission.KNOWLEDGE_READ, Permission.KNOWLEDGE_WRITE)
    ),
    Kind.OPERATOR: (
        Grant(Permission.GENERATE),
        Grant(Permission.NODE_INFO),
        Grant(Permission.KNOWLEDGE_READ),
        Grant(Permission.KNOWLEDGE_WRITE, Role.OPERATOR),  # and only where the node lets operators write
    ),
}

# The front door (gRPC Inference and OpenAI HTTP): clients only. A certificate caller is limited
# like an API key (rpm, tpm, models, adapters, collections); sensors and nodes are not clients.
FRONT_DOOR_GRANTS: dict[Kind, tuple[Grant, ...]] = {
    Kind.OPERATOR: (
        Grant(Permission.GENERATE),
        Grant(Permission.NODE_INFO),
        Grant(Permission.KNOWLEDGE_READ),
        Grant(Permission.KNOWLEDGE_WRITE, Role.OPERATOR),  # Ingest, to the nodes holding the collection
        Grant(Permission.METRICS),
    ),
    Kind.ORCHESTRATOR: (Grant(Permission.GENERATE), Grant(Permission.NODE_INFO), Grant(Permission.METRICS)),
    Kind.API_KEY: (Grant(Permission.GENERATE), Grant(Permission.NODE_INFO), Grant(Permission.KNOWLEDGE_READ)),
}

_SERVICE = "/edgefleet.v1.Inference/"
METHOD_PERMISSION: dict[str, Permission] = {
    f"{_SERVICE}Generate": Permission.GENERATE,
    f"{_SERVICE}Embed": Permission.GENERATE,
    f"{_SERVICE}GetNodeInfo": Permission.NODE_INFO,
    f"{_SERVICE}ListCollections": Permission.NODE_INFO,
    f"{_SERVICE}Retrieve": Permission.KNOWLEDGE_READ,
    f"{_SERVICE}Ingest": Permission.KNOWLEDGE_WRITE,
    f"{_SERVICE}DeleteDocuments": Permission.KNOWLEDGE_WRITE,
}
"""Every Inference method and the permission it needs; methods outside the table (gRPC health,
reflection) are open to any site certificate that is not revoked."""

HTTP_ROUTE_PERMISSION: dict[str, Permission] = {
    "/v1/chat/completions": Permission.GENERATE,
    "/v1/completions": Permission.GENERATE,
    "/v1/embeddings": Permission.GENERATE,
    "/v1/models": Permission.NODE_INFO,
    "/metrics": Permission.METRICS,
}


def method_name(full_method: str) -> str:
    return full_method.rsplit("/", 1)[-1]


def allowed(grants: dict[Kind, tuple[Grant, ...]], who: Principal, permission: Permission) -> bool:
    for g in grants.get(who.kind, ()):
        if g.permission is permission:
            return who.kind is not Kind.OPERATOR or who.has_role(g.min_role)
    return False


def needed_role(grants: dict[Kind, tuple[Grant, ...]], kind: Kind, permission: Permission) -> Role | None:
    return next((g.min_role for g in grants.get(kind, ()) if g.permission is permission), None)


def deny_message(
    who: Principal,
    what: str,
    where: str,
    grants: dict[Kind, tuple[Grant, ...]] | None = None,
    permission: Permission | None = None,
) -> str:
    """`<who> may not <what> on <where>: <why>` — the words of every refusal."""
    why = f"{who.kind.value} identities have no such grant"
    if who.kind is Kind.UNKNOWN:
        why = "its certificate names no edgefleet kind (issued before roles: re-enroll it)"
    elif who.kind is Kind.OPERATOR and grants is not None and permission is not None:
        role = needed_role(grants, who.kind, permission)
        if role is not None:
            why = f"it needs role {role.value} or higher"
    return f"{who} may not {what} on {where}: {why}"


# Operator commands: the least role that may run each op (unknown ops need admin).
COMMAND_ROLE: dict[str, Role] = {
    "status": Role.VIEWER,
    "rules": Role.VIEWER,
    "adapters": Role.VIEWER,
    "telemetry-history": Role.VIEWER,
    "tools": Role.VIEWER,
    "agents": Role.VIEWER,
    "agent-runs": Role.VIEWER,
    "agent-run": Role.VIEWER,
    "approvals": Role.VIEWER,
    "rollout-status": Role.VIEWER,
    "push-template": Role.OPERATOR,
    "rm-template": Role.OPERATOR,
    "push-rule": Role.OPERATOR,
    "rm-rule": Role.OPERATOR,
    "upload-chunk": Role.OPERATOR,
    "push-adapter": Role.OPERATOR,
    "rm-adapter": Role.OPERATOR,
    "push-knowledge": Role.OPERATOR,
    "rm-knowledge": Role.OPERATOR,
    "push-model": Role.OPERATOR,
    "rm-model": Role.OPERATOR,
    "assign-groups": Role.OPERATOR,
    "group-policy": Role.OPERATOR,
    "set-tool": Role.OPERATOR,
    "rm-tool": Role.OPERATOR,
    "set-agent": Role.OPERATOR,
    "rm-agent": Role.OPERATOR,
    "approve": Role.OPERATOR,  # an act call outside its rule's limits runs on an operator's word
    "deny": Role.OPERATOR,
    "rollout-start": Role.OPERATOR,
    "rollout-pause": Role.OPERATOR,
    "rollout-resume": Role.OPERATOR,
    "rollout-promote": Role.OPERATOR,
    "rollout-abort": Role.OPERATOR,
    "keys-create": Role.ADMIN,
    "keys-list": Role.ADMIN,
    "keys-revoke": Role.ADMIN,
}


def command_role(op: str) -> Role:
    return COMMAND_ROLE.get(op, Role.ADMIN)


# MQTT: the topics of each kind, by name of a proto/topics.py `Topics` method and whose name fills
# it (`self`: the identity; `groups`: each of its groups; `any`: the `+` wildcard; `none`: no
# argument). `sensor_filters`, `node_outputs` and `actuator_topics` are the site's own choices (BrokerPolicy).
# fleet/site/broker_config.py renders these into Mosquitto's ACL.
@dataclass(frozen=True)
class TopicGrant:
    access: str  # read | write | readwrite
    topic: str  # a Topics method, or `sensor_filters` / `node_outputs` / `actuator_topics` / `root#`
    arg: str = "none"  # none | self | groups | any | artifact_groups


MQTT_GRANTS: dict[Kind, tuple[TopicGrant, ...]] = {
    Kind.NODE: (
        TopicGrant("write", "node_status", "self"),  # birth, will and shutdown message
        TopicGrant("write", "node_telemetry", "self"),
        TopicGrant("write", "node_reported", "self"),
        TopicGrant("write", "results", "self"),
        TopicGrant("write", "errors", "self"),
        TopicGrant("write", "artifact_chunk_requests", "self"),  # its own: the orchestrator knows who asked
        TopicGrant("write", "cli_responses", "any"),  # answers to operators' requests (MQTT 5 response topic)
        TopicGrant("write", "node_outputs"),
        TopicGrant("write", "agent_runs", "self"),  # its agent runs' reports (the orchestrator checks the node id)
        TopicGrant("write", "actuator_topics"),  # act tools publish on the site's actuators (BrokerPolicy)
        TopicGrant("read", "desired_node", "self"),
        TopicGrant("read", "node_assignment", "self"),  # its group assignment (only the orchestrator writes it)
        TopicGrant("read", "desired_group", "groups"),
        TopicGrant("read", "node_requests", "self"),
        TopicGrant("read", "group_requests", "groups"),
        TopicGrant("read", "artifacts_for", "artifact_groups"),  # manifests and chunks of its groups only
        TopicGrant("read", "crl"),  # the site's revocation list (signed by the CA)
        TopicGrant("read", "orchestrator_status"),  # it announces itself again when the orchestrator comes online
        TopicGrant("read", "sensor_filters"),
        TopicGrant("read", "node_agent_decisions", "self"),  # operators' signed decisions on its own runs
    ),
    # site devices: sensors publish readings; actuators (a sensor identity too) listen for agents' actions
    Kind.SENSOR: (TopicGrant("write", "sensor_filters"), TopicGrant("read", "actuator_topics")),
    Kind.OPERATOR: (
        TopicGrant("write", "orchestrator_commands"),
        TopicGrant("write", "node_requests", "any"),
        TopicGrant("write", "group_requests", "any"),
        TopicGrant("read", "root#"),
        TopicGrant("read", "sensor_filters"),
        TopicGrant("read", "actuator_topics"),  # what agents did on the site
    ),
    # root# holds them all; the agent topics are named too, so the table says who reads and writes them
    Kind.ORCHESTRATOR: (
        TopicGrant("readwrite", "root#"),
        TopicGrant("read", "all_agent_runs"),
        TopicGrant("write", "node_agent_decisions", "any"),
    ),
}
