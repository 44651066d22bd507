"""Operator commands for sensor rules: a rule is desired state of a target, like a template.

A rule is checked when pushed: its own fields by `RuleSpec` (topic filter, JSON schema, output
topic), and here that its template is desired for the same target (or, for a node, for one of
its groups), so a node never gets a rule it cannot run.
"""

from __future__ import annotations

import json

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import (
    PublishDesired,
    refuse_older,
    remove_entry,
    resolve_target,
    target_note,
)
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.commands import PushRuleRequest, RemoveRuleRequest, RulesRequest
from edgefleet.proto.input_limits import brief
from edgefleet.proto.paging import page_of
from edgefleet.proto.payloads import CommandResult, Target


class RuleCommands:
    def __init__(self, registry: Registry, publish_desired: PublishDesired) -> None:
        self.registry = registry
        self.publish_desired = publish_desired

    def register(self, table: CommandTable) -> None:
        table.register(RulesRequest, self.rules)
        table.register(PushRuleRequest, self.push)
        table.register(RemoveRuleRequest, self.remove)

    def _templates_for(self, t: Target) -> set[str]:
        desired = self.registry.all_desired()
        keys = [t.key]
        if t.kind == "node":
            row = next((r for r in self.registry.rows() if r.node_id == t.name), None)
            keys += [f"group:{g}" for g in (row.groups if row else [])]
        return {name for k in keys if k in desired for name in desired[k].templates}

    def rules(self, req: RulesRequest) -> CommandResult:
        """One page of targets with their desired rules (`targets`: key → rule name → rule), by target
        key; `total` targets, `next_offset` (None: the last page)."""
        wanted = {req.target} if ":" in req.target else {f"group:{req.target}", f"node:{req.target}"}
        desired = self.registry.all_desired()
        entries = [
            (k, {n: json.loads(r.model_dump_json()) for n, r in d.rules.items()})
            for k, d in sorted(desired.items())
            if d.rules and (not req.target or k in wanted)
        ]
        page = page_of(entries, req.offset, req.limit)
        return CommandResult(
            ok=True,
            data={
                "targets": dict(page.items),
                "total": page.total,
                "offset": page.offset,
                "next_offset": page.next_offset,
            },
        )

    def remove(self, req: RemoveRuleRequest) -> CommandResult:
        t = resolve_target(req.target, self.registry)
        return remove_entry(self.publish_desired, t, self.registry.desired(t.key), "rules", req.name, "rule")

    def push(self, req: PushRuleRequest) -> CommandResult:
        t = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(t.key)
        rules = dict(current.rules) if current else {}
        rule = req.rule
        before = rules.get(rule.name)
        before_version = before.version if before else None
        refuse_older("rule", rule.name, rule.version, before_version, t.key, req.force, "rule.version")
        if rule.template not in self._templates_for(t):
            raise CommandError(
                f"rule {rule.name}: template {brief(rule.template)} is not desired for {t.key}; "
                f"push it first (edgefleet fleet push-template)",
                field="rule.template",
            )
        rules[rule.name] = rule
        doc = self.publish_desired(t, current, {"rules": rules})
        return CommandResult(
            ok=True,
            message=f"rule {rule.name}@{rule.version} ({rule.topic_filter}) published for {t.key} as "
            f"generation {doc.generation}{target_note(t, self.registry)}",
            data={"generation": doc.generation, "target": t.key},
        )
