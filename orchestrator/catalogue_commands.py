"""Operator commands for site tools and agent rules: desired state of a target, like rules.

`set-tool` / `set-agent` put one spec (proto/agents.py `ToolSpec`, `AgentRule`, validated when the
command is parsed) into a target's desired state; `rm-tool` / `rm-agent` take one out; `tools` /
`agents` list them per target. Before it publishes, the orchestrator checks the catalogue as the
nodes will merge it (`proto/payloads.py` `merged`: a node's groups, then its own target): every
tool an agent rule names must be there and `limits.act` must name act tools taking those
arguments (`check_catalogue`), in the target's own view and in that of each registered node the
change reaches. A change that would break a view is refused, naming the rule and the tool; a
problem a view had already is not this change's. A publish tool whose topic falls outside the
site's actuator topics (EDGEFLEET_ACTUATOR_TOPICS, as the broker ACL lets nodes write) is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import (
    PublishDesired,
    refuse_older,
    resolve_target,
    target_note,
)
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.actuators import DEFAULT_ACTUATOR_TOPICS, outside_actuators
from edgefleet.proto.agent_commands import (
    AgentsRequest,
    RemoveAgentRequest,
    RemoveToolRequest,
    SetAgentRequest,
    SetToolRequest,
    ToolsRequest,
)
from edgefleet.proto.agents import AgentRule, ToolSpec, check_catalogue
from edgefleet.proto.input_limits import brief
from edgefleet.proto.paging import page_of
from edgefleet.proto.payloads import CommandResult, DesiredState, Target, merged

Docs = dict[str, DesiredState]


class CatalogueCommands:
    def __init__(
        self,
        registry: Registry,
        publish_desired: PublishDesired,
        actuator_topics: Sequence[str] = DEFAULT_ACTUATOR_TOPICS,
    ) -> None:
        self.registry = registry
        self.publish_desired = publish_desired
        self.actuator_topics = tuple(actuator_topics)

    def register(self, table: CommandTable) -> None:
        table.register(SetToolRequest, self.set_tool)
        table.register(RemoveToolRequest, self.rm_tool)
        table.register(ToolsRequest, self.tools)
        table.register(SetAgentRequest, self.set_agent)
        table.register(RemoveAgentRequest, self.rm_agent)
        table.register(AgentsRequest, self.agents)

    # -- the merged views a change reaches -----------------------------------------------------------
    def _views(self, t: Target) -> list[tuple[str, str, list[str]]]:
        """(what, node id or "", groups in merge order) of each view a change of `t` reaches: the
        target's own, and each registered node it reaches (a group's members; the node itself)."""
        rows = self.registry.rows()
        views: list[tuple[str, str, list[str]]] = []
        if t.kind == "group":
            views.append((f"group {t.name}", "", [t.name]))
        for r in rows:
            groups = [*r.groups, *(g for g in r.assigned_groups if g not in r.groups)]
            if (t.kind == "node" and r.node_id == t.name) or (t.kind == "group" and t.name in groups):
                views.append((f"node {r.node_id}", r.node_id, groups))
        if t.kind == "node" and not views:  # not registered yet: its own target alone
            views.append((f"node {t.name}", t.name, []))
        return views

    @staticmethod
    def _problems(docs: Docs, node: str, groups: list[str]) -> set[str]:
        if node:
            tools, agents = merged(docs, node, groups, "tools"), merged(docs, node, groups, "agents")
        else:
            doc = docs.get(f"group:{groups[0]}")
            tools, agents = (dict(doc.tools), dict(doc.agents)) if doc else ({}, {})
        return set(check_catalogue(tools, agents))

    def _check(self, t: Target, section: str, entries: dict[str, Any], field: str) -> None:
        """Refuse when `t`'s `section` as `entries` breaks the catalogue of a view it reaches."""
        before = self.registry.all_desired()
        after = dict(before)
        current = before.get(t.key)
        base = current or DesiredState.model_construct(target=t)  # no document yet: only its sections are read
        after[t.key] = base.model_copy(update={section: entries})
        for what, node, groups in self._views(t):
            new = sorted(self._problems(after, node, groups) - self._problems(before, node, groups))
            if new:
                raise CommandError(
                    f"refused: on {what} this change leaves {'; '.join(new[:5])}"
                    f"{f' (and {len(new) - 5} more)' if len(new) > 5 else ''}",
                    field=field,
                )

    # -- tools ----------------------------------------------------------------------------------------
    def set_tool(self, req: SetToolRequest) -> CommandResult:
        tool: ToolSpec = req.tool
        outside = outside_actuators(tool, self.actuator_topics)
        if outside:
            raise CommandError(f"{outside} (EDGEFLEET_ACTUATOR_TOPICS)", field="tool.binding.topic")
        t = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(t.key)
        tools = dict(current.tools) if current else {}
        before = tools.get(tool.name)
        refuse_older(
            "tool", tool.name, tool.version, before.version if before else None, t.key, req.force, "tool.version"
        )
        tools[tool.name] = tool
        self._check(t, "tools", tools, "tool.kind" if before and before.kind != tool.kind else "tool")
        doc = self.publish_desired(t, current, {"tools": tools})
        return CommandResult(
            ok=True,
            message=f"tool {tool.label} ({tool.kind}, {tool.binding.type}) published for {t.key} as generation "
            f"{doc.generation}{target_note(t, self.registry)}",
            data={"generation": doc.generation, "target": t.key},
        )

    def rm_tool(self, req: RemoveToolRequest) -> CommandResult:
        return self._remove(req.target, req.name, "tools", "tool")

    def tools(self, req: ToolsRequest) -> CommandResult:
        return self._list(req.target, req.offset, req.limit, "tools")

    # -- agent rules ----------------------------------------------------------------------------------
    def set_agent(self, req: SetAgentRequest) -> CommandResult:
        rule: AgentRule = req.agent
        t = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(t.key)
        agents = dict(current.agents) if current else {}
        before = agents.get(rule.name)
        refuse_older(
            "agent rule", rule.name, rule.version, before.version if before else None, t.key, req.force, "agent.version"
        )
        agents[rule.name] = rule
        self._check(t, "agents", agents, "agent.tools")
        doc = self.publish_desired(t, current, {"agents": agents})
        return CommandResult(
            ok=True,
            message=f"agent rule {rule.label} (tools {', '.join(rule.tools)}) published for {t.key} as generation "
            f"{doc.generation}{target_note(t, self.registry)}",
            data={"generation": doc.generation, "target": t.key},
        )

    def rm_agent(self, req: RemoveAgentRequest) -> CommandResult:
        return self._remove(req.target, req.name, "agents", "agent rule")

    def agents(self, req: AgentsRequest) -> CommandResult:
        return self._list(req.target, req.offset, req.limit, "agents")

    # -- shared ---------------------------------------------------------------------------------------
    def _remove(self, target: str, name: str, section: str, noun: str) -> CommandResult:
        t = resolve_target(target, self.registry)
        current = self.registry.desired(t.key)
        entries = dict(getattr(current, section)) if current else {}
        if name not in entries:
            have = ", ".join(sorted(entries)[:20]) or "none"
            raise CommandError(f"{noun} {brief(name)} is not desired for {t.key} (it has: {have})", field="name")
        del entries[name]
        if section == "tools":
            self._check(t, section, entries, "name")
        doc = self.publish_desired(t, current, {section: entries})
        return CommandResult(
            ok=True,
            message=f"{noun} {name} removed from {t.key}, generation {doc.generation}",
            data={"generation": doc.generation, "target": t.key},
        )

    def _list(self, target: str, offset: int, limit: int | None, section: str) -> CommandResult:
        """One page of targets with their `section` (`targets`: key → name → spec), by target key."""
        wanted = {target} if ":" in target else {f"group:{target}", f"node:{target}"}
        entries = [
            (k, {n: json.loads(s.model_dump_json()) for n, s in getattr(d, section).items()})
            for k, d in sorted(self.registry.all_desired().items())
            if getattr(d, section) and (not target or k in wanted)
        ]
        page = page_of(entries, offset, limit)
        return CommandResult(
            ok=True,
            data={
                "targets": dict(page.items),
                "total": page.total,
                "offset": page.offset,
                "next_offset": page.next_offset,
            },
        )
