"""The signed manifests a node's document needs when a rollout publishes it: an adapter, a knowledge
version or a base model in a node override is fetched under the node's own scope, so its manifest
is published there (retained), as a push publishes it under the target's."""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.orchestrator.adapter_commands import ARTIFACT_KINDS, AdapterCommands
from edgefleet.orchestrator.desired_edits import PublishRetained
from edgefleet.orchestrator.model_commands import ModelCommands
from edgefleet.proto.payloads import DesiredState
from edgefleet.proto.topics import Topics


def manifest_publisher(
    adapters: AdapterCommands, models: ModelCommands | None, topics: Topics, publish_retained: PublishRetained
) -> Callable[[DesiredState], None]:
    """`publish(doc)`: the manifests of the artifacts `doc` names, under its target's scope."""

    def publish(doc: DesiredState) -> None:
        if not (doc.adapters or doc.knowledge or doc.model):
            return
        scope = topics.artifact_scope(doc.target.kind, doc.target.name)
        for kind in ARTIFACT_KINDS:
            for name, ref in (doc.knowledge if kind == "knowledge" else doc.adapters).items():
                m = adapters.kept_manifest(kind, ref)  # that version's, kept by `push-* --upload-only`
                if m is not None:
                    publish_retained(topics.artifact_manifest(scope, kind, name), m.model_dump_json().encode())
        if models is not None:
            models.publish_manifests(doc)

    return publish
