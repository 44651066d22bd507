"""What the orchestrator's commands share to change a target's desired state.

Every command part (templates, rules, adapters, knowledge) edits one section of the target's
document and publishes the next generation through a `PublishDesired` (the runtime's
`DesiredStatePublisher`): recorded in the registry and the fleet view, then published retained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.payloads import CommandResult, DesiredState, Target
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator.desired")

PublishDesired = Callable[[Target, DesiredState | None, dict[str, Any]], DesiredState]
PublishRetained = Callable[[str, bytes], object]  # (topic, payload), QoS 1, retained


def resolve_target(spec: str, registry: Registry) -> Target:
    """`node:<id>`, `group:<name>`, or a bare name: a registered node, else a group."""
    kind, _, name = spec.partition(":") if ":" in spec else ("", "", spec)
    if not name or not valid_name(name):
        raise CommandError(f"target {spec!r} is not a valid node or group name")
    if kind not in ("", "node", "group"):
        raise CommandError(f"target kind {kind!r} must be node or group")
    if not kind:
        kind = "node" if name in registry.node_ids() else "group"
    return Target.model_validate({"kind": kind, "name": name})


class DesiredStatePublisher:
    """Publishes the next generation of a target's desired state (a `PublishDesired`)."""

    def __init__(
        self, site: str, topics: Topics, registry: Registry, view: FleetView, publish_retained: PublishRetained
    ) -> None:
        self.site, self.topics, self.registry, self.view = site, topics, registry, view
        self.publish_retained = publish_retained

    def __call__(self, target: Target, current: DesiredState | None, changes: dict[str, Any]) -> DesiredState:
        """`current` with `changes` (templates, adapters, …) as the next generation of `target`."""
        renewed = {"v", "site", "target", "generation", "ts"}  # set again below
        fields: dict[str, Any] = current.model_dump(exclude=renewed) if current else {}
        fields.update(changes)
        doc = DesiredState(
            site=self.site,
            target=target,
            generation=(current.generation if current else 0) + 1,
            **fields,
        )
        if self.registry.record_desired(doc):
            self.view.apply_desired(doc)
        topic = (
            self.topics.desired_node(target.name) if target.kind == "node" else self.topics.desired_group(target.name)
        )
        self.publish_retained(topic, doc.dumps())
        log.info("desired state published", extra={"target": target.key, "generation": doc.generation})
        return doc


def remove_entry(
    publish: PublishDesired,
    target: Target,
    current: DesiredState | None,
    section: str,
    name: str,
    noun: str,
) -> CommandResult:
    """Publish `current` without `name` in `section` (e.g. "rules"); refused when it is not there."""
    entries = dict(getattr(current, section)) if current else {}
    if name not in entries:
        raise CommandError(f"{noun} {name!r} is not desired for {target.key}")
    del entries[name]
    doc = publish(target, current, {section: entries})
    return CommandResult(
        ok=True,
        message=f"{noun} {name} removed from {target.key}, generation {doc.generation}",
        data={"generation": doc.generation, "target": target.key},
    )
