"""What the orchestrator's commands share to change a target's desired state.

Every command part (templates, rules, adapters, knowledge) edits one section of the target's
document and publishes the next generation through a `PublishDesired` (the runtime's
`DesiredStatePublisher`): signed with the site key (`DesiredSigner`, when the site has one),
recorded in the registry and the fleet view, then published retained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.artifacts import ArtifactError, SiteKey
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import MAX_GENERATION, CommandResult, DesiredState, Target
from edgefleet.proto.signing import KeyRing, load_public_keys, sign_desired
from edgefleet.proto.topics import Topics, valid_name
from edgefleet.proto.versions import is_older

log = logging.getLogger("edgefleet.orchestrator.desired")

PublishDesired = Callable[[Target, DesiredState | None, dict[str, Any]], DesiredState]
PublishRetained = Callable[[str, bytes], object]  # (topic, payload), QoS 1, retained


def resolve_target(spec: str, registry: Registry, *, creating: bool = False, new_group: bool = False) -> Target:
    """`node:<id>`, `group:<name>`, or a bare name: a registered node, else a group.

    `creating` (a push): a bare name that is no registered node, no group a node is in and no
    target with desired state is refused (NOT_FOUND) unless `new_group`: a typo must not make a group.
    """
    kind, _, name = spec.partition(":") if ":" in spec else ("", "", spec)
    if not name or not valid_name(name):
        raise CommandError(f"target {brief(spec)} is not a valid node or group name", field="target")
    if kind not in ("", "node", "group"):
        raise CommandError(f"target kind {brief(kind)} must be node or group", field="target")
    if not kind:
        nodes = registry.node_ids()
        kind = "node" if name in nodes else "group"
        groups = registry.groups()
        known = name in groups or registry.desired(f"group:{name}") is not None
        if kind == "group" and creating and not known and not new_group:
            raise CommandError(
                f"target {brief(name)} is no node and no group of this site (groups: "
                f"{', '.join(sorted(groups)[:20]) or 'none'}; nodes: {', '.join(sorted(nodes)[:20]) or 'none'}); "
                f"to create group {name} pass --new-group (or name it group:{name})",
                ErrorCode.NOT_FOUND,
                field="target",
            )
    return Target.model_validate({"kind": kind, "name": name})


def target_note(target: Target, registry: Registry) -> str:
    """A warning to add to a push's message when no registered node is the target or in it (else "")."""
    if target.kind == "node":
        known = target.name in registry.node_ids()
        return "" if known else f"; no node {target.name} has registered yet: it gets this when it connects"
    if target.name in registry.groups():
        return ""
    return f"; no node is in group {target.name} yet: nodes that join it get this"


def refuse_older(
    noun: str, name: str, version: str, desired_version: str | None, key: str, force: bool, field: str
) -> None:
    """OLDER_VERSION when `version` goes back from the one desired now for `key` (unless `force`).

    `field`: the request field that holds `version` ("template.version")."""
    if desired_version is not None and not force and is_older(version, desired_version):
        raise CommandError(
            f"{noun} {name} version {version} is older than {desired_version}, desired for {key} now; "
            f"push a newer version, or pass --force to go back",
            ErrorCode.OLDER_VERSION,
            field=field,
        )


def accepted_keys_path(key_path: Path) -> Path:
    """Public keys (PEM, one or several) of the site's earlier keys still trusted: `<site>.accepted.pub`."""
    return key_path.with_name(key_path.stem + ".accepted.pub")


class DesiredSigner:
    """Signs desired state with the site key and verifies echoes with its public half and the accepted keys.

    The key file is read when used (it may be written after the orchestrator started, by
    `edgefleet fleet init-site`). No key file: documents go out unsigned and echoes are taken
    unverified, as before signing existed (logged once). A key file that cannot be read stops both.
    """

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._warned = False

    def private(self) -> Ed25519PrivateKey | None:
        if not self.key_path.exists():
            if not self._warned:
                self._warned = True
                log.warning(
                    "desired state is published unsigned: no site key (run `edgefleet fleet init-site`)",
                    extra={"site_key": str(self.key_path)},
                )
            return None
        try:
            return SiteKey.load(self.key_path).private
        except (OSError, ValueError) as e:
            raise CommandError(f"the site key {self.key_path} cannot be read: {e}", ErrorCode.NO_SITE_KEY) from e

    def sign(self, doc: DesiredState) -> DesiredState:
        key = self.private()
        return sign_desired(doc, key) if key is not None else doc

    def ring(self) -> KeyRing:
        """The keys an echo may be signed with; empty: no site key, nothing to verify against."""
        key = self.private()
        if key is None:
            return KeyRing()
        accepted = accepted_keys_path(self.key_path)
        try:
            old = load_public_keys([accepted]) if accepted.exists() else []
        except (OSError, ValueError, ArtifactError) as e:
            log.error("accepted site keys cannot be read", extra={"path": str(accepted), "reason": str(e)})
            old = []
        return KeyRing([key.public_key(), *old])


class DesiredStatePublisher:
    """Publishes the next generation of a target's desired state (a `PublishDesired`), signed."""

    def __init__(
        self,
        site: str,
        topics: Topics,
        registry: Registry,
        view: FleetView,
        publish_retained: PublishRetained,
        signer: DesiredSigner | None = None,
    ) -> None:
        self.site, self.topics, self.registry, self.view = site, topics, registry, view
        self.publish_retained = publish_retained
        self.signer = signer

    def __call__(self, target: Target, current: DesiredState | None, changes: dict[str, Any]) -> DesiredState:
        """`current` with `changes` (templates, adapters, …) as the next generation of `target`."""
        renewed = {"v", "site", "target", "generation", "ts", "key_id", "signature"}  # set again below
        fields: dict[str, Any] = current.model_dump(exclude=renewed) if current else {}
        fields.update(changes)
        # Nodes may hold a newer generation than the registry (a registry rebuilt after the retained
        # document was lost or overwritten): continue after the newest anyone knows, or they ignore it.
        stored = current.generation if current else 0
        reported = self.registry.reported_generation(target.key)
        generation = max(stored, reported) + 1
        if generation > MAX_GENERATION:
            raise CommandError(
                f"{target.key} is at generation {max(stored, reported)}, the highest a desired state may have "
                f"({MAX_GENERATION}); clear the nodes' state for this target",
                ErrorCode.COMMAND_REFUSED,
            )
        if reported > stored:
            log.warning(
                "nodes report a newer generation than the registry; continuing after it",
                extra={"target": target.key, "registry_generation": stored, "reported_generation": reported},
            )
        doc = DesiredState(site=self.site, target=target, generation=generation, **fields)
        if self.signer is not None:
            doc = self.signer.sign(doc)
        if self.registry.record_desired(doc):
            self.view.apply_desired(doc)
        topic = (
            self.topics.desired_node(target.name) if target.kind == "node" else self.topics.desired_group(target.name)
        )
        self.publish_retained(topic, doc.dumps())
        log.info(
            "desired state published",
            extra={"target": target.key, "generation": doc.generation, "key_id": doc.key_id or None},
        )
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
        raise CommandError(f"{noun} {brief(name)} is not desired for {target.key}", field="name")
    del entries[name]
    doc = publish(target, current, {section: entries})
    return CommandResult(
        ok=True,
        message=f"{noun} {name} removed from {target.key}, generation {doc.generation}",
        data={"generation": doc.generation, "target": target.key},
    )
