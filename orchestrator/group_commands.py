"""Groups at run time: `assign-groups`, and the retained assignments the broker hands back.

The orchestrator is the only writer of `assign/node/<id>`: each assignment is the node's next
generation, signed with the site key (proto/signing.py `sign_assignment`), recorded in the
registry, then published retained. A node merges the assigned groups with its own
(EDGEFLEET_GROUPS) and reports the result; `status` shows both.

`group-policy`: whether a group requires rollouts (orchestrator/group_policies.py); while it does,
direct pushes to it or its nodes are refused (orchestrator/rollouts/push_guard.py).

Retained assignments that come back (our echoes, or from before the registry was lost) rebuild
the registry; a forged one is reported and the last genuine one is put back over it.
"""

from __future__ import annotations

import logging

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import DesiredSigner, PublishRetained
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.group_policies import GroupPolicies
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.commands import AssignGroupsRequest, GroupPolicyRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import (
    MAX_GENERATION,
    CommandResult,
    GroupAssignment,
    PayloadError,
    effective_groups,
    parse_payload,
)
from edgefleet.proto.signing import SignatureError, sign_assignment
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator.groups")


class GroupCommands:
    def __init__(
        self,
        site: str,
        topics: Topics,
        registry: Registry,
        publish_retained: PublishRetained,
        signer: DesiredSigner | None = None,
        policies: GroupPolicies | None = None,
    ) -> None:
        self.site, self.topics, self.registry = site, topics, registry
        self.publish_retained, self.signer = publish_retained, signer
        self.policies = policies or GroupPolicies(registry)

    def register(self, table: CommandTable) -> None:
        table.register(AssignGroupsRequest, self.assign_groups)
        table.register(GroupPolicyRequest, self.group_policy)

    def group_policy(self, req: GroupPolicyRequest) -> CommandResult:
        group = req.group.removeprefix("group:")
        if not valid_name(group):
            raise CommandError(f"group {brief(group)} is not a valid group name", field="group")
        known = self.registry.groups()
        if req.require_rollouts and group not in known and self.registry.desired(f"group:{group}") is None:
            raise CommandError(
                f"no group {brief(group)} on this site (groups: {', '.join(sorted(known)[:20]) or 'none'})",
                ErrorCode.NOT_FOUND,
                field="group",
            )
        self.policies.set(group, req.require_rollouts, req.operator)
        if req.require_rollouts:
            message = (
                f"group {group} requires rollouts now: a direct push to it or to its nodes is refused; "
                f"release changes with `edgefleet fleet rollout start NAME --target group:{group} ...`"
            )
        else:
            message = f"group {group} no longer requires rollouts: pushes to it go at once again"
        return CommandResult(
            ok=True,
            message=message,
            data={"group": group, "require_rollouts": req.require_rollouts,
                  "requiring_rollouts": self.policies.requiring_rollouts()},
        )  # fmt: skip

    def assign_groups(self, req: AssignGroupsRequest) -> CommandResult:
        node = req.target.removeprefix("node:")
        if not valid_name(node):
            raise CommandError(f"node {brief(node)} is not a valid node id", field="target")
        nodes = self.registry.node_ids()
        if node not in nodes:
            raise CommandError(
                f"no node {brief(node)} has registered with this site (nodes: "
                f"{', '.join(sorted(nodes)[:20]) or 'none'}); groups are assigned to known nodes",
                ErrorCode.NOT_FOUND,
                field="target",
            )
        current = self.registry.assignment(node)
        stored = current.generation if current else 0
        # a node may hold a newer one than the registry (a registry rebuilt without the retained message)
        generation = max(stored, self.registry.reported_generation(f"assign:{node}")) + 1
        if generation > MAX_GENERATION:
            raise CommandError(f"the group assignment of {node} is at its last generation", ErrorCode.COMMAND_REFUSED)
        doc = GroupAssignment(site=self.site, node_id=node, groups=req.groups, generation=generation)
        key = self.signer.private() if self.signer is not None else None
        if key is not None:
            doc = sign_assignment(doc, key)
        self.registry.record_assignment(doc)
        self.publish_retained(self.topics.node_assignment(node), doc.dumps())
        log.info("groups assigned", extra={"node": node, "groups": doc.groups, "generation": generation})
        own = self._own_groups(node)
        groups = effective_groups(own, doc.groups)
        assigned = ", ".join(doc.groups) or "none"
        return CommandResult(
            ok=True,
            message=f"node {node}: assigned groups {assigned} (generation {generation}); its groups once "
            f"applied: {', '.join(groups) or 'none'}",
            data={"generation": generation, "target": doc.key, "groups": groups, "assigned": doc.groups},
        )

    def _own_groups(self, node: str) -> list[str]:
        """The groups a node has of its own (profile, EDGEFLEET_GROUPS), as its status last said."""
        row = next((r for r in self.registry.node_records() if r.node_id == node), None)
        info = row.info if row is not None else None
        if info is None:
            return []
        return [g for g in info.groups if g not in info.assigned_groups]


class AssignmentIngest:
    """Retained assignments as the broker hands them back, into the registry (verified when the site has a key)."""

    def __init__(
        self,
        site: str,
        topics: Topics,
        registry: Registry,
        errors: ErrorReporter,
        signer: DesiredSigner | None,
        publish_retained: PublishRetained,
    ) -> None:
        self.site, self.topics, self.registry, self.errors = site, topics, registry, errors
        self.signer, self.publish_retained = signer, publish_retained

    def __call__(self, topic: str, payload: bytes) -> None:
        node = self.topics.assignment_of(topic)
        if not payload or node is None:
            return
        try:
            doc = parse_payload(GroupAssignment, payload)
        except PayloadError as e:
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, str(e))
            self._restore(topic, node)
            return
        if doc.site != self.site or doc.node_id != node:
            self.errors.report(topic, ErrorCode.WRONG_TARGET, f"group assignment of {doc.node_id} on {topic}")
            self._restore(topic, node)
            return
        try:
            ring = self.signer.ring() if self.signer is not None else None
        except CommandError as e:
            self.errors.report(topic, e.code, f"retained group assignment not adopted: {e}")
            return
        if ring:
            try:
                ring.verify(doc)
            except SignatureError as e:
                self.errors.report(topic, e.code, f"retained group assignment not adopted: {e}")
                self._restore(topic, node)
                return
        if not self.registry.record_assignment(doc):
            self._restore(topic, node)  # an older one put back (a replay): the newest goes back over it

    def _restore(self, topic: str, node: str) -> None:
        genuine = self.registry.assignment(node)
        if genuine is not None and genuine.signature:
            self.publish_retained(topic, genuine.dumps())
            log.info("retained group assignment restored", extra={"node": node, "generation": genuine.generation})
