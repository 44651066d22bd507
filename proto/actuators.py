"""Where a site's act tools may publish: the site's actuator topics, and whether a tool's topic falls under them.

The broker lets nodes write only the site's actuator filters (fleet/site/broker_config.py
`BrokerPolicy.actuator_topics`, default `actions/#`); the orchestrator refuses at push time a
publish tool whose topic could fall outside them, so an agent never holds a tool the broker
would silently drop. The node checks each concrete topic again before it publishes.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgefleet.proto.agents import ARG_PLACEHOLDER_RE, PublishBinding, ToolSpec

DEFAULT_ACTUATOR_TOPICS = ("actions/#",)


def publish_filter(binding: PublishBinding) -> str:
    """The MQTT filter every topic a publish binding can produce matches: a level holding an
    `{argument}` becomes `+` (the node refuses argument values holding '/', '+' or '#')."""
    return "/".join("+" if ARG_PLACEHOLDER_RE.search(level) else level for level in binding.topic.split("/"))


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic matching filter `inner` also matches filter `outer` (MQTT wildcards)."""
    o_levels, i_levels = outer.split("/"), inner.split("/")
    for i, o in enumerate(o_levels):
        if o == "#":
            return True
        if i >= len(i_levels) or i_levels[i] == "#":
            return False
        if o != "+" and o != i_levels[i]:
            return False
    return len(o_levels) == len(i_levels)


def outside_actuators(tool: ToolSpec, actuator_topics: Sequence[str]) -> str:
    """Why a publish tool's topic is not under the site's actuator filters ("" when it is, or it does not publish)."""
    b = tool.binding
    if not isinstance(b, PublishBinding):
        return ""
    flt = publish_filter(b)
    if any(filter_covers(a, flt) for a in actuator_topics):
        return ""
    return (
        f"tool {tool.name}: publish topic {b.topic!r} is outside the site's actuator topics "
        f"({', '.join(actuator_topics) or 'none'}); nodes may not publish there"
    )
