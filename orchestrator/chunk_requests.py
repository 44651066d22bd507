"""Chunk requests of nodes: checked against the stored manifest, then queued on the chunk sender."""

from __future__ import annotations

import logging

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.chunk_sender import ChunkSender
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ChunkRequest, PayloadError, parse_payload
from edgefleet.proto.topics import valid_name

log = logging.getLogger("edgefleet.orchestrator.chunks")


class ChunkRequests:
    def __init__(self, store: ArtifactStore, sender: ChunkSender, errors: ErrorReporter) -> None:
        self.store, self.sender, self.errors = store, sender, errors

    def on_request(self, topic: str, payload: bytes) -> None:
        try:
            req = parse_payload(ChunkRequest, payload)
        except PayloadError as e:
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, str(e))
            return
        manifest = self.store.manifest(req.kind, req.name) if valid_name(req.name) else None
        if manifest is None or manifest.version != req.version or manifest.sha256 != req.sha256:
            self.errors.report(
                topic,
                ErrorCode.UNKNOWN_ARTIFACT,
                f"node {req.node_id} asked for {req.kind} {req.name}@{req.version}, which is not the current version",
            )
            return
        bad = [i for i in req.chunks if i >= manifest.chunk_count]
        if bad:
            self.errors.report(
                topic,
                ErrorCode.CHUNK_OUT_OF_RANGE,
                f"node {req.node_id} asked for chunks {bad[:5]} of {manifest.label}, which has {manifest.chunk_count}",
            )
        added = self.sender.enqueue(manifest, [i for i in req.chunks if i < manifest.chunk_count])
        log.info(
            "chunks requested",
            extra={"node": req.node_id, "artifact": manifest.label, "asked": len(req.chunks), "queued": added},
        )
