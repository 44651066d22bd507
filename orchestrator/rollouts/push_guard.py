"""Direct pushes beside rollouts: which are refused, and the lock the others run under.

Two refusals, both naming what to do instead:
- a group that requires rollouts (orchestrator/group_policies.py) takes no direct push, nor does a
  node in it: its changes go out as releases (`edgefleet fleet rollout start`). Removals still go
  (a release cannot take an entry out of a group's own document wave by wave).
- a node in the waves of an unfinished rollout (running, paused, held, or with a rollback still
  due) takes no direct push or removal: the driver publishes that node's own document (node
  overrides), records what it had before and puts it back on a rollback, so a push between would
  be overwritten or restored under the operator's feet.

Every guarded push that is let through runs under the driver's lock, so its read of the current
document and its publish never interleave with one of the driver's (a generation published twice).
A push with `upload_only` changes no desired state and is never refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import resolve_target
from edgefleet.orchestrator.group_policies import GroupPolicies
from edgefleet.orchestrator.rollouts.driver import RolloutDriver
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, Target

PUSH_OPS = ("push-template", "push-rule", "set-agent", "set-tool", "push-adapter", "push-knowledge", "push-model")
REMOVE_OPS = ("rm-template", "rm-rule", "rm-agent", "rm-tool", "rm-adapter", "rm-knowledge", "rm-model")
START_HINT = "edgefleet fleet rollout start NAME --target {target} ..."


class PushGuard:
    def __init__(self, policies: GroupPolicies, driver: RolloutDriver) -> None:
        self.policies, self.driver = policies, driver

    def install(self, table: CommandTable) -> None:
        for op in (*PUSH_OPS, *REMOVE_OPS):
            table.wrap(op, self.around)

    def around(self, req: Any, handle: Callable[[Any], CommandResult]) -> CommandResult:
        if getattr(req, "upload_only", False):
            return handle(req)
        try:
            target = resolve_target(req.target, self.driver.registry)
        except CommandError:
            return handle(req)  # the handler refuses it, naming the field
        with self.driver.lock:
            self.check(req.op, target)
            return handle(req)

    def check(self, op: str, target: Target) -> None:
        """CommandError (COMMAND_REFUSED, field `target`) when `op` may not go to `target` directly now."""
        if op in PUSH_OPS:
            self._check_policy(op, target)
        if target.kind == "node":
            self._check_rollouts(op, target.name)

    def _check_policy(self, op: str, target: Target) -> None:
        if target.kind == "group":
            if self.policies.requires_rollouts(target.name):
                raise CommandError(
                    f"group {target.name} requires rollouts: a direct {op} to it is refused; release the change "
                    f"with `{START_HINT.format(target=target.key)}` (or turn the policy off: "
                    f"`edgefleet fleet group require-rollouts {target.name} off`)",
                    ErrorCode.COMMAND_REFUSED,
                    field="target",
                )
            return
        for group in self.node_groups(target.name):
            if self.policies.requires_rollouts(group):
                raise CommandError(
                    f"node {target.name} is in group {group}, which requires rollouts: a direct {op} to it is "
                    f"refused; release the change with `{START_HINT.format(target=target.key)}`",
                    ErrorCode.COMMAND_REFUSED,
                    field="target",
                )

    def _check_rollouts(self, op: str, node: str) -> None:
        for s in self.driver.store.all(active_only=True):
            if any(node in w.nodes for w in s.waves):
                w = s.wave()
                where = f"wave {w.index + 1}/{len(s.waves)} {w.state}" if w is not None else "rolling back"
                raise CommandError(
                    f"node {node} is in release {s.name} ({s.state}, {where}): a direct {op} to it now would "
                    f"race the release; wait for it to finish, or abort it (`edgefleet fleet rollout abort "
                    f"{s.name}`) and push again",
                    ErrorCode.COMMAND_REFUSED,
                    field="target",
                )

    def node_groups(self, node: str) -> list[str]:
        """The groups a node is in: those it reports, and those assigned to it (applied or not yet)."""
        view = self.driver.view.snapshot().node(node)
        groups = list(view.groups) if view is not None else []
        assigned = self.driver.registry.assignments().get(node)
        return list(dict.fromkeys([*groups, *(assigned.groups if assigned is not None else [])]))
