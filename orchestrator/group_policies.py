"""Per-group policies, kept in the registry's database (table `group_policies`): a group that
requires rollouts takes no direct push (orchestrator/rollouts/push_guard.py refuses it); its
changes go out as releases (`rollout-start`). A group without a row has the default: pushes go at once.

Unlike the rest of the registry this is not rebuilt from retained messages: it is the operator's
word, kept only here (a registry deleted forgets it, and pushes go at once again)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edgefleet.orchestrator.registry import Registry

log = logging.getLogger("edgefleet.orchestrator.group_policies")


@dataclass(frozen=True)
class GroupPolicy:
    group: str
    require_rollouts: bool
    operator: str  # who set it last ("" when unsigned)
    updated: float


class GroupPolicies:
    """The `group_policies` table of the registry's database; every call holds the registry's lock."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.db = registry.db

    def set(self, group: str, require_rollouts: bool, operator: str = "") -> GroupPolicy:
        policy = GroupPolicy(group, require_rollouts, operator, time.time())
        with self.registry.write():
            self.db.execute(
                "INSERT INTO group_policies (grp, require_rollouts, operator, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(grp) DO UPDATE SET require_rollouts = excluded.require_rollouts, "
                "operator = excluded.operator, updated = excluded.updated",
                [group, int(require_rollouts), operator, policy.updated],
            )
        log.info("group policy set", extra={"group": group, "require_rollouts": require_rollouts, "by": operator})
        return policy

    def get(self, group: str) -> GroupPolicy | None:
        with self.registry.lock:
            row = self.db.execute(
                "SELECT grp, require_rollouts, operator, updated FROM group_policies WHERE grp = ?", [group]
            ).fetchone()
        return GroupPolicy(row[0], bool(row[1]), row[2], row[3]) if row is not None else None

    def requires_rollouts(self, group: str) -> bool:
        policy = self.get(group)
        return policy is not None and policy.require_rollouts

    def requiring_rollouts(self) -> list[str]:
        """The groups that require rollouts now, sorted."""
        with self.registry.lock:
            rows = self.db.execute("SELECT grp FROM group_policies WHERE require_rollouts = 1 ORDER BY grp").fetchall()
        return [r[0] for r in rows]
