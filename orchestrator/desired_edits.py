"""What the orchestrator's commands share to change a target's desired state.

Every command part (templates, rules, adapters, knowledge) edits one section of the target's
document and publishes the next generation through the service's `PublishDesired`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefleet.proto.payloads import CommandResult, DesiredState, Target

PublishDesired = Callable[[Target, DesiredState | None, dict[str, Any]], DesiredState]


class CommandError(Exception):
    """A command the orchestrator refuses; the message tells the operator why."""


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
