"""The tool policy, pure: rule + catalogue + counters + the call + decisions in, a verdict out."""

from __future__ import annotations

import json
from typing import Any

from edgefleet.node.agents.policy import Call, Counters, ToolPolicy
from edgefleet.proto.agents import ActLimit, AgentLimits, AgentRule, ArgLimit, SensorTrigger, ToolSpec

NONE = Counters(node={}, rule={})


def read_tool(name: str = "read_temp") -> ToolSpec:
    return ToolSpec(
        name=name,
        version="1",
        kind="read",
        parameters={"type": "object", "properties": {"machine": {"type": "string"}}, "required": ["machine"]},
        binding={"type": "sensor_latest", "topic": "sensors/{machine}/temperature"},
    )


def act_tool(name: str = "open_ticket") -> ToolSpec:
    return ToolSpec(
        name=name,
        version="1",
        kind="act",
        parameters={
            "type": "object",
            "properties": {"machine": {"type": "string"}, "priority": {"type": "integer"}},
            "required": ["machine", "priority"],
        },
        binding={"type": "publish", "topic": "actions/tickets/{machine}"},
    )


TOOLS = {t.name: t for t in (read_tool(), act_tool(), act_tool("stop_machine"))}


def rule(**limits: Any) -> AgentRule:
    return AgentRule(
        name="overheat",
        version="1",
        trigger=SensorTrigger(type="sensor", topic_filter="sensors/+/vibration", variables={"machine": "topic[1]"}),
        goal="look at {{ machine }}",
        tools=["read_temp", "open_ticket"],
        limits=AgentLimits(**limits),
    )


WITHIN = {
    "act": {
        "open_ticket": ActLimit(
            calls_per_hour=2,
            args={"priority": ArgLimit(minimum=1, maximum=3), "machine": ArgLimit(allowed=["m1", "m2"])},
        )
    }
}


def call(tool: str, **args: Any) -> Call:
    return Call(tool, json.dumps(args))


def test_a_read_tool_runs_at_once() -> None:
    v = ToolPolicy(rule(), TOOLS).decide(call("read_temp", machine="m1"), NONE, 0)
    assert (v.action, v.why) == ("run", "read tool")


def test_an_act_call_within_its_limits_runs_by_itself() -> None:
    v = ToolPolicy(rule(**WITHIN), TOOLS).decide(call("open_ticket", machine="m1", priority=2), NONE, 0)
    assert v.action == "run" and "limits.act.open_ticket" in v.why


def test_an_act_call_without_act_limits_needs_approval() -> None:
    v = ToolPolicy(rule(), TOOLS).decide(call("open_ticket", machine="m1", priority=2), NONE, 0)
    assert v.action == "needs_approval" and "approval" in v.why


def test_an_argument_outside_its_range_needs_approval_naming_it() -> None:
    v = ToolPolicy(rule(**WITHIN), TOOLS).decide(call("open_ticket", machine="m1", priority=5), NONE, 0)
    assert v.action == "needs_approval"
    assert "priority=5 is above its maximum 3" in v.why


def test_an_argument_not_in_its_allowed_set_needs_approval() -> None:
    v = ToolPolicy(rule(**WITHIN), TOOLS).decide(call("open_ticket", machine="m9", priority=1), NONE, 0)
    assert v.action == "needs_approval" and "machine='m9' is not one of" in v.why


def test_an_act_call_over_its_hourly_allowance_needs_approval() -> None:
    counters = Counters(node={"open_ticket": 2}, rule={"open_ticket": 2})
    v = ToolPolicy(rule(**WITHIN), TOOLS).decide(call("open_ticket", machine="m1", priority=1), counters, 0)
    assert v.action == "needs_approval" and "calls_per_hour is 2" in v.why


def test_calls_of_other_rules_do_not_use_up_this_rules_act_allowance() -> None:
    counters = Counters(node={"open_ticket": 5}, rule={})
    v = ToolPolicy(rule(**WITHIN), TOOLS).decide(call("open_ticket", machine="m1", priority=1), counters, 0)
    assert v.action == "run"


def test_a_tool_the_rule_does_not_list_is_refused_even_if_in_the_catalogue() -> None:
    v = ToolPolicy(rule(), TOOLS).decide(call("stop_machine", machine="m1", priority=1), NONE, 0)
    assert v.action == "refused" and "not granted" in v.why and not v.stop


def test_a_tool_missing_from_the_catalogue_is_refused() -> None:
    v = ToolPolicy(rule(), {"read_temp": read_tool()}).decide(call("open_ticket", machine="m1", priority=1), NONE, 0)
    assert v.action == "refused" and "catalogue" in v.why


def test_arguments_that_do_not_match_the_schema_are_refused_naming_the_field() -> None:
    v = ToolPolicy(rule(), TOOLS).decide(Call("open_ticket", '{"machine": "m1", "priority": "high"}'), NONE, 0)
    assert v.action == "refused" and "priority" in v.why
    v = ToolPolicy(rule(), TOOLS).decide(Call("read_temp", "not json"), NONE, 0)
    assert v.action == "refused" and "not JSON" in v.why


def test_a_hard_cap_refuses_and_no_approval_overrides_it() -> None:
    r = rule(calls_per_hour={"open_ticket": 3}, **WITHIN)
    counters = Counters(node={"open_ticket": 3}, rule={"open_ticket": 0})
    for decision in (None, "approved"):
        v = ToolPolicy(r, TOOLS).decide(call("open_ticket", machine="m1", priority=1), counters, 0, decision)
        assert v.action == "refused" and "hard cap" in v.why


def test_a_hard_cap_applies_to_read_tools_too() -> None:
    v = ToolPolicy(rule(calls_per_hour={"read_temp": 1}), TOOLS).decide(
        call("read_temp", machine="m1"), Counters(node={"read_temp": 1}, rule={}), 0
    )
    assert v.action == "refused"


def test_operator_decisions() -> None:
    p = ToolPolicy(rule(), TOOLS)
    c = call("open_ticket", machine="m1", priority=9)
    assert p.decide(c, NONE, 0, "approved", "alice").action == "run"
    assert p.decide(c, NONE, 0, "approved", "alice").why == "approved by alice"
    denied = p.decide(c, NONE, 0, "denied", "bob")
    assert (denied.action, denied.why) == ("refused", "denied by bob")
    expired = p.decide(c, NONE, 0, "expired")
    assert (expired.action, expired.why) == ("refused", "approval expired")


def test_max_tool_calls_refuses_and_stops_the_run() -> None:
    v = ToolPolicy(rule(max_tool_calls=2), TOOLS).decide(call("read_temp", machine="m1"), NONE, 2)
    assert v.action == "refused" and v.stop == "max_tool_calls" and "max_tool_calls is 2" in v.why


def test_a_boolean_is_not_a_number_within_a_range() -> None:
    tool = ToolSpec(
        name="set_speed",
        version="1",
        kind="act",
        parameters={"type": "object", "properties": {"rpm": {}}},
        binding={"type": "publish", "topic": "actions/speed"},
    )
    r = AgentRule(
        name="speed",
        version="1",
        trigger={"type": "request"},
        goal="g",
        tools=["set_speed"],
        limits=AgentLimits(act={"set_speed": ActLimit(calls_per_hour=5, args={"rpm": ArgLimit(maximum=100)})}),
    )
    assert ToolPolicy(r, {"set_speed": tool}).decide(Call("set_speed", '{"rpm": true}'), NONE, 0).action == (
        "needs_approval"
    )
    assert ToolPolicy(r, {"set_speed": tool}).decide(Call("set_speed", '{"rpm": 50}'), NONE, 0).action == "run"
