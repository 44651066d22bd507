"""The site-agents contract (proto/agents.py), pure: what a tool and an agent rule may be, and every
refusal naming the field and the problem; the catalogue check; where act tools may publish
(proto/actuators.py); the typed commands; approval decisions signed with the site key."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgefleet.proto.actuators import filter_covers, outside_actuators, publish_filter
from edgefleet.proto.agent_runs import AgentRunReport, ApprovalDecision, ApprovalRequest
from edgefleet.proto.agents import AgentRule, PublishBinding, SensorReadBinding, ToolSpec, check_catalogue
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import DesiredState, GroupAssignment, PayloadError, describe_validation_error
from edgefleet.proto.signing import KeyRing, SignatureError, canonical, sign_decision

READ_TOOL: dict[str, Any] = {
    "name": "read_temperature",
    "version": "1",
    "description": "Latest temperature of a machine",
    "parameters": {
        "type": "object",
        "properties": {"machine": {"type": "string"}},
        "required": ["machine"],
    },
    "kind": "read",
    "binding": {"type": "sensor_latest", "topic": "sensors/{machine}/temperature"},
}
ACT_TOOL: dict[str, Any] = {
    "name": "open_ticket",
    "version": "1",
    "parameters": {
        "type": "object",
        "properties": {"machine": {"type": "string"}, "priority": {"type": "integer"}},
        "required": ["machine", "priority"],
    },
    "kind": "act",
    "binding": {"type": "publish", "topic": "actions/tickets/{machine}"},
}
RULE: dict[str, Any] = {
    "name": "overheat",
    "version": "1",
    "trigger": {"type": "sensor", "topic_filter": "sensors/+/vibration", "variables": {"machine": "topic[1]"}},
    "goal": "Machine {{ machine }} vibrates. Check its temperature; open a ticket if it is hot.",
    "tools": ["read_temperature", "open_ticket"],
    "limits": {"act": {"open_ticket": {"calls_per_hour": 2, "args": {"priority": {"minimum": 1, "maximum": 3}}}}},
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`base` with the dotted `path` set to `value` (a deep copy)."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[last] = value
    return out


def refusal(model: type[ToolSpec] | type[AgentRule], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return describe_validation_error(e.value)


def test_the_example_tools_and_rule_are_valid() -> None:
    read, act = ToolSpec.model_validate(READ_TOOL), ToolSpec.model_validate(ACT_TOOL)
    rule = AgentRule.model_validate(RULE)
    assert read.label == "read_temperature@1" and act.kind == "act"
    assert isinstance(read.binding, SensorReadBinding) and read.binding.subscription == "sensors/+/temperature"
    assert rule.limits.act["open_ticket"].calls_per_hour == 2
    assert check_catalogue({"read_temperature": read, "open_ticket": act}, {"overheat": rule}) == []


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("name", "read temperature", ["name", "read temperature", "letters, digits"]),
        ("version", "", ["version"]),
        ("kind", "write", ["kind", "'read' or 'act'"]),
        ("parameters", {"type": "array"}, ["parameters", "object schema"]),
        ("parameters", {"type": "object", "properties": 5}, ["parameters", "not a valid JSON schema"]),
        ("binding", {"type": "shell", "command": "rm"}, ["binding", "shell"]),
        ("binding.topic", "sensors/#", ["binding.sensor_latest.topic", "wildcards"]),
        ("binding.topic", "sensors/{machine}/{unit}", ["{unit}", "required string or integer parameter"]),
        ("binding.topic", "sensors/m-{machine}/t", ["whole topic level"]),
        ("binding.topic", "sensors/{machine/t", ["brace outside"]),
        ("description", "x" * 2000, ["description", "1024"]),
        ("surprise", 1, ["surprise", "Extra inputs are not permitted"]),
    ],
)
def test_a_bad_tool_is_refused_naming_the_field(path: str, value: Any, words: list[str]) -> None:
    message = refusal(ToolSpec, with_(READ_TOOL, path, value))
    for w in words:
        assert w in message, message


def test_a_tool_kind_must_match_its_binding() -> None:
    assert "publish binding changes the site, so kind must be 'act'" in refusal(
        ToolSpec, with_(ACT_TOOL, "kind", "read")
    )
    assert "sensor_latest binding only reads, so kind must be 'read'" in refusal(
        ToolSpec, with_(READ_TOOL, "kind", "act")
    )
    search = {
        **READ_TOOL,
        "binding": {"type": "knowledge_search", "collection": "manuals"},
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    assert "knowledge_search needs a required string parameter 'query'" in refusal(ToolSpec, search)
    assert "top_k" in refusal(ToolSpec, with_(search, "binding.top_k", 50))


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("name", "over/heat", ["name", "agent rule name 'over/heat' is invalid"]),
        ("tools", [], ["tools", "at least 1"]),
        ("tools", ["read_temperature", "read_temperature"], ["tools", "name a tool twice"]),
        ("tools", ["read temperature"], ["tool name 'read temperature'"]),
        ("trigger", {"type": "cron"}, ["trigger", "cron"]),
        ("trigger.topic_filter", "sensors/#/x", ["topic_filter", "'#' must be the whole last level"]),
        ("trigger.variables", {"machine": "topic[1"}, ["variables", "topic[1"]),
        ("trigger.variables", {f"v{i}": "payload" for i in range(40)}, ["variables", "the limit is 32"]),
        ("goal", "", ["goal", "at least 1"]),
        ("goal", "Check {{ machine }} and {{ line }}", ["goal", "undeclared variable(s) line"]),
        ("goal", "{% for %}", ["goal", "syntax error"]),
        ("limits.max_steps", 0, ["limits.max_steps", "greater than or equal to 1"]),
        ("limits.max_seconds", 0, ["limits.max_seconds", "greater than 0"]),
        ("limits.approval_timeout_s", 1, ["limits.approval_timeout_s", "10"]),
        ("limits.calls_per_hour", {"stop_machine": 1}, ["limits.calls_per_hour names tool 'stop_machine'"]),
        ("limits.act", {"stop_machine": {}}, ["limits.act names tool 'stop_machine'"]),
        ("limits.act.open_ticket.args.priority", {}, ["needs minimum, maximum or allowed"]),
        ("limits.act.open_ticket.args.priority", {"minimum": 5, "maximum": 1}, ["minimum 5.0 is above maximum 1.0"]),
        ("output_topic", "results/#", ["output_topic", "wildcards"]),
        ("adapter", "../x", ["adapter", "invalid"]),
        ("temperature", 3, ["temperature", "less than or equal to 2"]),
    ],
)
def test_a_bad_agent_rule_is_refused_naming_the_field(path: str, value: Any, words: list[str]) -> None:
    message = refusal(AgentRule, with_(RULE, path, value))
    for w in words:
        assert w in message, message


def test_a_request_triggered_goal_may_use_the_variables_the_request_names() -> None:
    rule = AgentRule.model_validate({**RULE, "trigger": {"type": "request"}, "goal": "Look at {{ machine }}"})
    assert rule.trigger.type == "request"
    assert "syntax error" in refusal(AgentRule, {**RULE, "trigger": {"type": "request"}, "goal": "{{ x"})


def test_the_catalogue_names_each_problem() -> None:
    read, act = ToolSpec.model_validate(READ_TOOL), ToolSpec.model_validate(ACT_TOOL)
    rule = AgentRule.model_validate(RULE)
    assert check_catalogue({"read_temperature": read}, {"overheat": rule}) == [
        "agent rule overheat: tool 'open_ticket' is not in the catalogue"
    ]
    act_as_read = ToolSpec.model_validate({**READ_TOOL, "name": "open_ticket"})
    problems = check_catalogue({"read_temperature": read, "open_ticket": act_as_read}, {"overheat": rule})
    assert problems == [
        "agent rule overheat: limits.act names 'open_ticket', a read tool (read tools need no approval)"
    ]
    odd = AgentRule.model_validate(with_(RULE, "limits.act.open_ticket.args", {"speed": {"maximum": 3}}))
    problems = check_catalogue({"read_temperature": read, "open_ticket": act}, {"overheat": odd})
    assert problems == [
        "agent rule overheat: limits.act.open_ticket.args names 'speed', which tool open_ticket does not take "
        "(its parameters: machine, priority)"
    ]


def test_act_tools_publish_only_under_the_sites_actuator_topics() -> None:
    act = ToolSpec.model_validate(ACT_TOOL)
    assert isinstance(act.binding, PublishBinding)
    assert publish_filter(act.binding) == "actions/tickets/+"
    assert outside_actuators(act, ["actions/#"]) == ""
    assert outside_actuators(act, ["actions/tickets/+"]) == ""
    assert outside_actuators(ToolSpec.model_validate(READ_TOOL), []) == ""  # reads publish nothing
    why = outside_actuators(act, ["actions/valves/#"])
    assert "open_ticket" in why and "'actions/tickets/{machine}'" in why and "actions/valves/#" in why
    elsewhere = ToolSpec.model_validate(with_(ACT_TOOL, "binding.topic", "edgefleet/lab/desired/node/{machine}"))
    assert "outside the site's actuator topics" in outside_actuators(elsewhere, ["actions/#"])
    partial = ToolSpec.model_validate(with_(ACT_TOOL, "binding.topic", "actions/m-{machine}"))
    assert isinstance(partial.binding, PublishBinding) and publish_filter(partial.binding) == "actions/+"
    # filter coverage, MQTT's way
    assert filter_covers("a/#", "a") and filter_covers("a/#", "a/+/c") and filter_covers("+/b", "x/b")
    assert not filter_covers("a/b", "a/+") and not filter_covers("a/+", "a/#") and not filter_covers("a/+", "a/b/c")


def test_reports_and_decisions_name_a_run_id_fit_for_a_topic_level() -> None:
    ok = AgentRunReport(node_id="n1", run_id="run-0001", rule="overheat", rule_version="1", trigger="t", state="done")
    assert ok.run_id == "run-0001"
    for bad in ("a/b/c/d/e", "run+0001", "short", "x" * 65):
        with pytest.raises(ValidationError, match="run id"):
            AgentRunReport(node_id="n1", run_id=bad, rule="r", rule_version="1", trigger="t", state="done")
        with pytest.raises(ValidationError, match="run id"):
            ApprovalDecision(site="lab", node_id="n1", run_id=bad, step=1, approve=True, operator="alice")
    with pytest.raises(ValidationError, match="node name"):
        AgentRunReport(node_id="../n1", run_id="run-0001", rule="r", rule_version="1", trigger="t", state="done")
    pending = ApprovalRequest(run_id="run-0002", step=3, tool="open_ticket", arguments="{}", why="x", expires_at=1.0)
    with pytest.raises(ValidationError, match="pending approval names run run-0002, not this run run-0001"):
        AgentRunReport(
            node_id="n1", run_id="run-0001", rule="r", rule_version="1", trigger="t", state="waiting", pending=pending
        )
    with pytest.raises(ValidationError, match="operator"):
        ApprovalDecision(site="lab", node_id="n1", run_id="run-0001", step=1, approve=True, operator="")


def test_an_approval_decision_is_signed_with_the_site_key_and_verifies_only_as_it_is() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = ApprovalDecision(site="lab", node_id="n1", run_id="run-0001", step=2, approve=True, operator="alice")
    signed = sign_decision(d, key)
    ring = KeyRing([key.public_key()])
    ring.verify(signed)
    assert signed.key_id and signed.signature and signed.operator == "alice"
    for change in ({"approve": False}, {"operator": "mallory"}, {"step": 3}, {"node_id": "n2"}):
        with pytest.raises(SignatureError, match="does not verify") as e:
            ring.verify(signed.model_copy(update=change))
        assert e.value.code is ErrorCode.BAD_SIGNATURE
    with pytest.raises(SignatureError, match="not signed") as e:
        ring.verify(d)
    assert e.value.code is ErrorCode.UNSIGNED
    with pytest.raises(SignatureError, match="not one this site trusts"):
        KeyRing([other.public_key()]).verify(signed)
    # its own domain: the bytes signed are never those of a desired state or a group assignment
    body = canonical(d)
    assert body.startswith(b"edgefleet-approval/1\n")
    doc = DesiredState(site="lab", target={"kind": "node", "name": "n1"}, generation=1)
    assignment = GroupAssignment(site="lab", node_id="n1", generation=1)
    assert not canonical(doc).startswith(b"edgefleet-approval") and canonical(assignment) != body


def test_the_agent_commands_are_typed_and_refuse_naming_the_field() -> None:
    tool = ToolSpec.model_validate(ACT_TOOL)
    assert Command(op="set-tool", target="line", tool=tool).request.tool == tool  # type: ignore[attr-defined]
    cmd = Command.model_validate({"op": "set-agent", "target": "line", "agent": RULE})
    assert cmd.request.agent.name == "overheat"  # type: ignore[attr-defined]
    with pytest.raises(PayloadError) as e:
        Command(op="set-tool", target="line", tool=with_(ACT_TOOL, "kind", "read"))
    assert e.value.field == "tool" and "kind must be 'act'" in str(e.value)
    with pytest.raises(PayloadError) as e:
        Command(op="set-agent", target="line", agent=with_(RULE, "limits.max_steps", 99))
    assert e.value.field == "agent.limits.max_steps" and "max_steps" in str(e.value)
    with pytest.raises(PayloadError) as e:
        Command(op="approve", node="n1", run_id="x/y", step=1)
    assert e.value.field == "run_id"
    with pytest.raises(PayloadError) as e:
        Command(op="deny", node="n1", run_id="run-0001", step=-1)
    assert e.value.field == "step"
    with pytest.raises(PayloadError) as e:
        Command(op="agent-runs", state="sleeping")
    assert e.value.field == "state"
    assert Command(op="approvals").op == "approvals"
