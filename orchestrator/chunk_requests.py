"""Chunk requests of nodes: checked against the stored manifest and the requesting node's scopes,
then queued on the chunk sender.

A node asks on its own topic, `artifact/requests/<node>`, which the broker lets only that node
write: the asking node is the one the topic names, and a request whose `node_id` names another
node is refused (a node cannot ask in another's name).

A request names the scope it needs (`group/<g>` or `node/<n>`: the target the artifact was pushed
to). Chunks go out on that scope's topics only when the node belongs to it (it is the node, or
the fleet view or its group assignment puts it in the group) and the target's desired state
names that very artifact: a node cannot have another group's artifact sent where it can read it.
The broker's ACL stops it reading other scopes too; this check is the orchestrator's own half.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.chunk_sender import ChunkSender
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.access import Kind, Principal
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ChunkRequest, DesiredState, PayloadError, parse_payload
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator.chunks")

NodeGroups = Callable[[str], Collection[str]]  # node id → the groups it is in now


class ChunkRequests:
    def __init__(
        self,
        store: ArtifactStore,
        sender: ChunkSender,
        errors: ErrorReporter,
        topics: Topics,
        registry: Registry,
        node_groups: NodeGroups,
    ) -> None:
        self.store, self.sender, self.errors = store, sender, errors
        self.topics, self.registry, self.node_groups = topics, registry, node_groups

    def on_request(self, topic: str, payload: bytes) -> None:
        try:
            req = parse_payload(ChunkRequest, payload)
        except PayloadError as e:
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, str(e))
            return
        if not self._from_named_node(topic, req) or not self._allowed(topic, req):
            return
        # that version's manifest, not only the newest: a target rolled back to an older version
        # (a rollout's rollback, a forced push) still gets its chunks
        manifest = self.store.manifest(req.kind, req.name, req.version) if valid_name(req.name) else None
        if manifest is None or manifest.version != req.version or manifest.sha256 != req.sha256:
            self.errors.report(
                topic,
                ErrorCode.UNKNOWN_ARTIFACT,
                f"node {req.node_id} asked for {req.kind} {req.name}@{req.version}, which was never pushed "
                f"with that content",
            )
            return
        bad = [i for i in req.chunks if i >= manifest.chunk_count]
        if bad:
            self.errors.report(
                topic,
                ErrorCode.CHUNK_OUT_OF_RANGE,
                f"node {req.node_id} asked for chunks {bad[:5]} of {manifest.label}, which has {manifest.chunk_count}",
            )
        added = self.sender.enqueue(manifest, req.scope, [i for i in req.chunks if i < manifest.chunk_count])
        log.info(
            "chunks requested",
            extra={
                "node": req.node_id,
                "scope": req.scope,
                "artifact": manifest.label,
                "asked": len(req.chunks),
                "queued": added,
            },
        )

    def _from_named_node(self, topic: str, req: ChunkRequest) -> bool:
        """The request came on the topic of the node it names (`artifact/requests/<node>`: the broker
        lets a node write only its own); else refused, logged and reported (PERMISSION_DENIED)."""
        asker = self.topics.chunk_requester_of(topic)
        if asker == req.node_id:
            return True
        who = Principal(asker, Kind.NODE) if asker is not None else f"a client on {topic}"
        message = (
            f"{who} may not ask for chunks on {topic}: the request names node {req.node_id!r}, "
            f"and a node asks only in its own name, on {self.topics.artifact_chunk_requests(req.node_id)}"
        )
        log.warning("chunk request refused", extra={"node": asker, "named": req.node_id, "reason": message})
        self.errors.report(topic, ErrorCode.PERMISSION_DENIED, message)
        return False

    def _allowed(self, topic: str, req: ChunkRequest) -> bool:
        """The node belongs to the scope it names, and the artifact was pushed there; else refused,
        logged and reported (PERMISSION_DENIED, UNKNOWN_ARTIFACT)."""
        target = self.topics.artifact_target(req.scope)
        label = f"{req.kind} {req.name}@{req.version}"
        if target is None:  # the payload model checked it; kept for a model that changes
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, f"scope {req.scope!r} is not group/<g> or node/<n>")
            return False
        kind, name = target
        if kind == "node":
            member, why = name == req.node_id, f"it is node {req.node_id!r}, not {name!r}"
        else:
            groups = sorted(self.node_groups(req.node_id))
            member, why = name in groups, f"it is not in group {name!r} (its groups: {', '.join(groups) or 'none'})"
        if not member:
            message = f"{Principal(req.node_id, Kind.NODE)} may not fetch {label} on {req.scope}: {why}"
            log.warning("chunk request refused", extra={"node": req.node_id, "scope": req.scope, "reason": message})
            self.errors.report(topic, ErrorCode.PERMISSION_DENIED, message)
            return False
        doc = self.registry.desired(f"{kind}:{name}")
        if not _names(doc, req):
            message = f"node {req.node_id} asked for {label} on {req.scope}, which was not pushed to {kind} {name}"
            log.warning("chunk request refused", extra={"node": req.node_id, "scope": req.scope, "reason": message})
            self.errors.report(topic, ErrorCode.UNKNOWN_ARTIFACT, message)
            return False
        return True


def _names(doc: DesiredState | None, req: ChunkRequest) -> bool:
    """`doc` (a target's desired state) names the requested artifact at the requested content."""
    if doc is None:
        return False
    if req.kind == "model":
        ref = doc.model if doc.model is not None and doc.model.name == req.name else None
    else:
        ref = (doc.knowledge if req.kind == "knowledge" else doc.adapters).get(req.name)
    return ref is not None and ref.sha256 == req.sha256 and ref.version == req.version
