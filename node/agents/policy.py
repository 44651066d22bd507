"""The tool policy of site agents: may this call run now, must it wait for an operator, or is it refused?

A plain, pure object (see DESIGN.md, "Agents on a node"): the rule, the tool catalogue, the calls
of the last hour, the call itself and what an operator decided about it go in; a verdict comes
out. Nothing a tool returned and nothing a document said is an input, so nothing they say can
widen the tools, the limits or the approvals.

Order of the checks (the first that applies decides):

1. the run's `max_tool_calls` is reached: refused, and the run stops (`stop` names the limit);
2. the tool is not one of the rule's tools, or not in the catalogue: refused (the model is told);
3. the arguments are not a JSON object valid against the tool's schema: refused;
4. a hard cap (`limits.calls_per_hour[tool]`, all rules of this node) is reached: refused, not approvable;
5. an operator decided: approved runs, denied and expired are refused;
6. a `read` tool runs;
7. an `act` tool runs when the rule's `limits.act[tool]` allows it (its arguments within their
   ranges and allowed sets, and fewer calls of this rule in the last hour than its `calls_per_hour`);
   otherwise it needs an operator's approval, and `why` names the limit it is outside of.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import ValidationError
from jsonschema.validators import validator_for

from edgefleet.proto.agents import AgentRule, ArgLimit, ToolSpec

Action = Literal["run", "needs_approval", "refused"]
Decision = Literal["approved", "denied", "expired"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    why: str = ""
    stop: str = ""  # a limit that ends the run (refused calls only): "max_tool_calls"

    @staticmethod
    def run(why: str = "") -> Verdict:
        return Verdict("run", why)

    @staticmethod
    def approval(why: str) -> Verdict:
        return Verdict("needs_approval", why)

    @staticmethod
    def refused(why: str, stop: str = "") -> Verdict:
        return Verdict("refused", why, stop)


@dataclass(frozen=True)
class Call:
    """One tool call as the model made it: the tool's name and its arguments (JSON text)."""

    tool: str
    arguments: str


@dataclass(frozen=True)
class Counters:
    """Calls that ran in the last hour: per tool on this node (hard caps), and per tool of this rule (act limits)."""

    node: Mapping[str, int]
    rule: Mapping[str, int]


def parse_arguments(call: Call, spec: ToolSpec) -> dict[str, Any]:
    """The call's arguments as a dict valid against the tool's schema; ValueError saying what is wrong."""
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError as e:
        raise ValueError(f"arguments of {call.tool} are not JSON: {e}") from e
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {call.tool} must be a JSON object")
    validator = validator_for(spec.parameters)(spec.parameters)
    try:
        validator.validate(args)
    except ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "arguments"
        raise ValueError(f"arguments of {call.tool} do not match its schema at {where}: {e.message}") from e
    return args


def _outside(name: str, value: Any, limit: ArgLimit) -> str:
    """Why `value` is outside `limit` ("" when within it)."""
    if limit.allowed is not None and (isinstance(value, bool) or value not in limit.allowed):
        return f"argument {name}={value!r} is not one of {limit.allowed}"
    if limit.minimum is not None or limit.maximum is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"argument {name}={value!r} is not a number"
        if limit.minimum is not None and value < limit.minimum:
            return f"argument {name}={value} is below its minimum {limit.minimum:g}"
        if limit.maximum is not None and value > limit.maximum:
            return f"argument {name}={value} is above its maximum {limit.maximum:g}"
    return ""


class ToolPolicy:
    """Verdicts for one rule's calls against one catalogue."""

    def __init__(self, rule: AgentRule, tools: Mapping[str, ToolSpec]) -> None:
        self.rule, self.tools = rule, tools

    def decide(
        self, call: Call, counters: Counters, calls_in_run: int, decision: Decision | None = None, operator: str = ""
    ) -> Verdict:
        rule, limits = self.rule, self.rule.limits
        if calls_in_run >= limits.max_tool_calls:
            return Verdict.refused(
                f"the run made {calls_in_run} tool calls; its limit max_tool_calls is {limits.max_tool_calls}",
                stop="max_tool_calls",
            )
        if call.tool not in rule.tools:
            return Verdict.refused(
                f"tool {call.tool!r} is not granted to agent rule {rule.name} (it may use {', '.join(rule.tools)})"
            )
        spec = self.tools.get(call.tool)
        if spec is None:
            return Verdict.refused(f"tool {call.tool!r} is not in this node's tool catalogue")
        try:
            args = parse_arguments(call, spec)
        except ValueError as e:
            return Verdict.refused(str(e))
        cap = limits.calls_per_hour.get(call.tool)
        if cap is not None and counters.node.get(call.tool, 0) >= cap:
            return Verdict.refused(
                f"tool {call.tool} ran {counters.node.get(call.tool, 0)} times in the last hour; "
                f"its hard cap limits.calls_per_hour is {cap}"
            )
        if decision == "approved":
            return Verdict.run(f"approved by {operator}" if operator else "approved")
        if decision == "denied":
            return Verdict.refused(f"denied by {operator}" if operator else "denied by an operator")
        if decision == "expired":
            return Verdict.refused("approval expired")
        if spec.kind == "read":
            return Verdict.run("read tool")
        return self._act(call.tool, args, counters)

    def _act(self, tool: str, args: dict[str, Any], counters: Counters) -> Verdict:
        act = self.rule.limits.act.get(tool)
        if act is None:
            return Verdict.approval(f"rule {self.rule.name} lets {tool} run only with an operator's approval")
        done = counters.rule.get(tool, 0)
        if done >= act.calls_per_hour:
            return Verdict.approval(
                f"{tool} ran {done} times in the last hour for rule {self.rule.name}; "
                f"limits.act.{tool}.calls_per_hour is {act.calls_per_hour}"
            )
        for name, limit in act.args.items():
            if name not in args:
                return Verdict.approval(f"argument {name} is missing, so it is not within limits.act.{tool}")
            why = _outside(name, args[name], limit)
            if why:
                return Verdict.approval(f"{why} (limits.act.{tool})")
        return Verdict.run(f"within limits.act.{tool}")
