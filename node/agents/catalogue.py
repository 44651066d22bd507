"""The tools and agent rules in effect on a node: merged from its groups' desired state and its own,
as templates and sensor rules are (the node's own entry wins on a name clash)."""

from __future__ import annotations

from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.payloads import DesiredState, merged


def effective_tools(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> dict[str, ToolSpec]:
    return merged(docs, node_id, groups, "tools")


def effective_agents(
    docs: dict[str, DesiredState], node_id: str, groups: list[str]
) -> dict[str, tuple[AgentRule, str | None]]:
    """Each agent rule with the group that shares its triggers (None: the node's own rule, not shared)."""
    out: dict[str, tuple[AgentRule, str | None]] = {}
    for g in groups:
        if f"group:{g}" in docs:
            out.update({n: (r, g) for n, r in docs[f"group:{g}"].agents.items()})
    if f"node:{node_id}" in docs:
        out.update({n: (r, None) for n, r in docs[f"node:{node_id}"].agents.items()})
    return out
