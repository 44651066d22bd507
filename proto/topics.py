"""The MQTT topic contract: every topic edgefleet publishes or subscribes to is built here.

All topics live under a root, `edgefleet/<site>/` by default. No other module writes a topic
string. The README's topic table is this module in prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_name(name: str) -> bool:
    """Site, node, group, template names: no path separators, wildcards or `..`."""
    return bool(NAME_RE.match(name)) and ".." not in name


def check_name(kind: str, name: str) -> str:
    if not valid_name(name):
        raise ValueError(
            f"{kind} name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..' or '/'"
        )
    return name


ANY_LEVEL = "+"
"""A whole-level wildcard, as a filter builder's argument: it stays a wildcard, never encoded."""


def encode_level(value: str) -> str:
    """`value` as one topic level: `%`, `+`, `#` and `/` percent-encoded (a version such as
    `1.0+cu121` is allowed, but `+` and `#` are MQTT wildcards and `/` splits levels).
    `ANY_LEVEL` passes through, so filter builders can take it in any position."""
    if value == ANY_LEVEL:
        return value
    return _ENCODE_RE.sub(lambda m: _ENCODED[m.group()], value)


def decode_level(encoded: str) -> str:
    """The value `encode_level` encoded into a topic level."""
    return _DECODE_RE.sub(lambda m: _DECODED[m.group().upper()], encoded)


_ENCODED = {c: f"%{ord(c):02X}" for c in "%+#/"}
_DECODED = {v: k for k, v in _ENCODED.items()}
_ENCODE_RE = re.compile("[%+#/]")
_DECODE_RE = re.compile("%(?:25|2B|23|2F)", re.IGNORECASE)


@dataclass(frozen=True)
class Topics:
    """Topics of one site. `root` ends with '/'."""

    site: str
    root: str

    @classmethod
    def for_site(cls, site: str, root_template: str = "edgefleet/{site}/") -> Topics:
        check_name("site", site)
        root = root_template.format(site=site)
        if not root.endswith("/"):
            root += "/"
        if any(c in root for c in "+#") or root.startswith("$"):
            raise ValueError(f"topic root {root!r} may not contain wildcards or start with '$'")
        return cls(site, root)

    # -- node presence and state (published by nodes) ---------------------------------------
    def node_status(self, node_id: str) -> str:
        """Retained `online` birth / `offline` will and shutdown message of a node."""
        return f"{self.root}node/{node_id}/status"

    def node_telemetry(self, node_id: str) -> str:
        return f"{self.root}node/{node_id}/telemetry"

    def node_reported(self, node_id: str) -> str:
        """Retained: what the node applied (generations, templates) and why not, if it could not."""
        return f"{self.root}node/{node_id}/reported"

    # -- desired state (published by the orchestrator, retained) -----------------------------
    def desired_node(self, node_id: str) -> str:
        return f"{self.root}desired/node/{node_id}"

    def desired_group(self, group: str) -> str:
        return f"{self.root}desired/group/{group}"

    def node_assignment(self, node_id: str) -> str:
        """Retained, signed GroupAssignment: the groups the orchestrator adds to a node's own."""
        return f"{self.root}assign/node/{node_id}"

    # -- artifacts and results (the adapter, knowledge and sensor-rule issues use these) ----------
    # An artifact is published under the target it was pushed to (`group/<g>` or `node/<n>`), so
    # the broker lets a node read only the artifacts of its own groups and of itself.
    def artifact_scope(self, target_kind: str, target: str) -> str:
        """`group/<g>` or `node/<n>`: the level pair an artifact is published under."""
        if target_kind not in ("group", "node"):
            raise ValueError(f"artifact target kind {target_kind!r} must be group or node")
        return f"{target_kind}/{encode_level(target)}"

    def artifact_manifest(self, scope: str, kind: str, name: str) -> str:
        """Retained, signed manifest of the newest version of a large artifact (adapter, knowledge)."""
        return f"{self.root}artifact/{scope}/{encode_level(kind)}/{encode_level(name)}/manifest"

    def artifact_chunk(self, scope: str, kind: str, name: str, version: str, index: int) -> str:
        """`version` (and kind, name) go through `encode_level`: `1.0+cu121` is `1.0%2Bcu121` here."""
        return f"{self.artifact_chunks(scope, kind, name, version)[:-1]}{index}"  # the filter's `+` → the index

    def artifact_chunks(self, scope: str, kind: str, name: str, version: str) -> str:
        """Filter: every chunk of one version of an artifact."""
        return f"{self.root}artifact/{scope}/{encode_level(kind)}/{encode_level(name)}/{encode_level(version)}/chunk/+"

    def artifacts_for(self, scope: str) -> str:
        """Filter: every manifest and chunk published for one target (what the broker lets it read)."""
        return f"{self.root}artifact/{scope}/#"

    def crl(self) -> str:
        """Retained: the site CA's certificate revocation list (PEM, signed by the CA itself)."""
        return f"{self.root}pki/crl"

    def artifact_chunk_requests(self, node_id: str) -> str:
        """Node `node_id` asks here for the chunks it is missing. Its own topic: the broker lets a
        node write only its own, so the orchestrator knows who asked from the topic."""
        return f"{self.root}artifact/requests/{node_id}"

    def node_requests(self, node_id: str) -> str:
        """Ad-hoc inference for one node (MQTT 5 request: response topic + correlation data)."""
        return f"{self.root}node/{node_id}/requests"

    def group_requests(self, group: str) -> str:
        """Ad-hoc inference for any one node of a group (nodes share it: `$share/<group>/…`)."""
        return f"{self.root}group/{group}/requests"

    def results(self, node_id: str) -> str:
        """Answers to sensor messages, published by the node that answered."""
        return f"{self.root}results/{node_id}"

    # -- agents -------------------------------------------------------------------------------------
    def agent_runs(self, node_id: str) -> str:
        """AgentRunReport of node `node_id`'s agent runs, at every change of a run (QoS 1)."""
        return f"{self.root}agents/runs/{node_id}"

    def agent_decisions(self, node_id: str, run_id: str) -> str:
        """Retained, signed ApprovalDecision for a pending call of run `run_id` on node `node_id`."""
        return f"{self.root}agents/decisions/{node_id}/{run_id}"

    def node_agent_decisions(self, node_id: str) -> str:
        """What a node subscribes to: the decisions about its own runs."""
        return f"{self.root}agents/decisions/{node_id}/+"

    def all_agent_runs(self) -> str:
        return f"{self.root}agents/runs/+"

    # -- errors, commands -----------------------------------------------------------------------
    def errors(self, source_id: str) -> str:
        """Rejected input, with the reason: from node `source_id` or the orchestrator."""
        return f"{self.root}errors/{source_id}"

    def orchestrator_status(self) -> str:
        return f"{self.root}orchestrator/status"

    def orchestrator_commands(self) -> str:
        """Operator commands (MQTT 5 request/response: response topic + correlation data)."""
        return f"{self.root}orchestrator/commands"

    def cli_responses(self, client_id: str) -> str:
        return f"{self.root}cli/{client_id}/responses"

    # -- subscription filters -------------------------------------------------------------------
    def all_node_status(self) -> str:
        return f"{self.root}node/+/status"

    def all_node_reported(self) -> str:
        return f"{self.root}node/+/reported"

    def all_node_telemetry(self) -> str:
        return f"{self.root}node/+/telemetry"

    def all_desired(self) -> str:
        return f"{self.root}desired/#"

    def all_node_assignments(self) -> str:
        return f"{self.root}assign/node/+"

    def all_errors(self) -> str:
        return f"{self.root}errors/+"

    def all_artifact_chunk_requests(self) -> str:
        """Filter: every node's chunk requests (the orchestrator's subscription)."""
        return self.artifact_chunk_requests(ANY_LEVEL)

    def all_artifact_manifests(self, scope: str, kind: str) -> str:
        """Filter: the manifests of every artifact of one kind published for one target."""
        return f"{self.root}artifact/{scope}/{encode_level(kind)}/+/manifest"

    # -- parsing --------------------------------------------------------------------------------
    def parse(self, topic: str) -> tuple[str, ...] | None:
        """Split a topic under this root into its levels; None when it is not ours."""
        if not topic.startswith(self.root):
            return None
        return tuple(topic[len(self.root) :].split("/"))

    def node_of(self, topic: str, kind: str) -> str | None:
        """The node id of `<root>node/<id>/<kind>`, else None."""
        levels = self.parse(topic)
        if levels and len(levels) == 3 and levels[0] == "node" and levels[2] == kind:
            return levels[1]
        return None

    def desired_target(self, topic: str) -> tuple[str, str] | None:
        """('node'|'group', name) of a desired-state topic, else None."""
        levels = self.parse(topic)
        if levels and len(levels) == 3 and levels[0] == "desired" and levels[1] in ("node", "group"):
            return levels[1], levels[2]
        return None

    def assignment_of(self, topic: str) -> str | None:
        """The node id of `<root>assign/node/<id>`, else None."""
        levels = self.parse(topic)
        if levels and len(levels) == 3 and levels[0] == "assign" and levels[1] == "node":
            return levels[2]
        return None

    def chunk_requester_of(self, topic: str) -> str | None:
        """The node id of `<root>artifact/requests/<node>` (a valid node name), else None."""
        levels = self.parse(topic)
        if levels and len(levels) == 3 and levels[:2] == ("artifact", "requests") and valid_name(levels[2]):
            return levels[2]
        return None

    def artifact_target(self, scope: str) -> tuple[str, str] | None:
        """('group'|'node', name) of an artifact scope (`artifact_scope`'s inverse), else None."""
        kind, sep, target = scope.partition("/")
        if sep and kind in ("group", "node") and valid_name(decode_level(target)):
            return kind, decode_level(target)
        return None

    def _scope(self, levels: tuple[str, ...]) -> str | None:
        """The scope of `artifact/<group-or-node>/<target>/…` levels, else None."""
        if len(levels) < 3 or levels[0] != "artifact" or levels[1] not in ("group", "node"):
            return None
        scope = f"{levels[1]}/{levels[2]}"
        return scope if self.artifact_target(scope) else None

    def manifest_of(self, topic: str) -> ManifestTopic | None:
        """The parts of `<root>artifact/<group-or-node>/<target>/<kind>/<name>/manifest`, else None."""
        levels = self.parse(topic)
        if levels and len(levels) == 6 and levels[5] == "manifest" and (scope := self._scope(levels)):
            return ManifestTopic(scope, decode_level(levels[3]), decode_level(levels[4]))
        return None

    def chunk_of(self, topic: str) -> ChunkTopic | None:
        """The parts of `<root>artifact/<group-or-node>/<target>/<kind>/<name>/<version>/chunk/<i>`
        (i in decimal digits), else None."""
        levels = self.parse(topic)
        if (
            levels
            and len(levels) == 8
            and levels[6] == "chunk"
            and _INDEX_RE.fullmatch(levels[7])
            and (scope := self._scope(levels))
        ):
            return ChunkTopic(
                scope, decode_level(levels[3]), decode_level(levels[4]), decode_level(levels[5]), int(levels[7])
            )
        return None


_INDEX_RE = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class ManifestTopic:
    """What a manifest's topic says: the target it was published for (`group/<g>`, `node/<n>`) and
    which artifact."""

    scope: str
    kind: str
    name: str


@dataclass(frozen=True)
class ChunkTopic:
    """What a chunk's topic says: the target it was published for, which artifact version and which chunk."""

    scope: str
    kind: str
    name: str
    version: str
    index: int


TOPIC_TABLE = [
    (
        "node/<node>/status",
        "node",
        "retained, QoS 1",
        "NodeStatus: `online` + info on connect; `offline` by will/shutdown",
    ),
    (
        "node/<node>/telemetry",
        "node",
        "QoS 0, every few s",
        "Telemetry: queue, slots, tokens/s, temperature, memory, sensor inbox/outbox and per-rule counts",
    ),
    (
        "node/<node>/reported",
        "node",
        "retained, QoS 1",
        "ReportedState: applied generations, templates, adapters, knowledge, transfers, errors",
    ),
    ("desired/node/<node>", "orchestrator", "retained, QoS 1", "DesiredState for one node"),
    ("desired/group/<group>", "orchestrator", "retained, QoS 1", "DesiredState for every node of a group"),
    (
        "assign/node/<node>",
        "orchestrator",
        "retained, QoS 1",
        "GroupAssignment: groups added to the node's own at run time, signed with the site key",
    ),
    (
        "artifact/<group-or-node>/<target>/<kind>/<name>/manifest",
        "orchestrator",
        "retained, QoS 1",
        "Manifest, signed with the site key, for one target",
    ),
    (
        "artifact/<group-or-node>/<target>/<kind>/<name>/<version>/chunk/<i>",
        "orchestrator",
        "QoS 1",
        "raw bytes of chunk i",
    ),
    ("pki/crl", "orchestrator", "retained, QoS 1", "the site CA's CRL (PEM, signed by the CA)"),
    (
        "artifact/requests/<node>",
        "node",
        "QoS 1",
        "ChunkRequest: chunks a node is missing (each node asks on its own topic)",
    ),
    ("results/<node>", "node", "QoS 1", "SensorResult: the answer to one sensor message (default output topic)"),
    (
        "node/<node>/requests",
        "anyone",
        "QoS 1, MQTT 5 request",
        "InferenceRequest; InferenceResponse to the response topic",
    ),
    ("group/<group>/requests", "anyone", "QoS 1, MQTT 5 request", "the same, answered by one node of the group"),
    ("agents/runs/<node>", "node", "QoS 1", "AgentRunReport: one agent run's state, steps and pending approval"),
    (
        "agents/decisions/<node>/<run>",
        "orchestrator",
        "retained, QoS 1",
        "ApprovalDecision: an operator's approve/deny of a pending call, signed with the site key",
    ),
    ("errors/<source>", "node, orchestrator", "QoS 1", "ErrorReport: rejected input and why"),
    ("orchestrator/status", "orchestrator", "retained, QoS 1", "OrchestratorStatus: online/offline"),
    ("orchestrator/commands", "CLI", "QoS 1, MQTT 5 request", "Command; the answer goes to the response topic"),
    ("cli/<client>/responses", "orchestrator", "QoS 1", "CommandResult for one CLI call"),
]
