"""A run's conversation as the ledger keeps it (JSON) and as the engine takes it (ChatTurn), and its report.

Pure: the loop calls these to turn ledger rows into model input and AgentRunReports.
"""

from __future__ import annotations

import json
import time
from typing import Any

from edgefleet.node.agents.ledger import Approval, RunRow
from edgefleet.node.service_types import ChatTurn
from edgefleet.node.tool_calls.types import ToolCall, ToolDef
from edgefleet.proto.agent_runs import MAX_STEPS_REPORTED, AgentRunReport, AgentStep, ApprovalRequest
from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.payloads import TemplateSpec
from edgefleet.proto.templates import compile_template

MAX_DETAIL_CHARS = 1000


def render_goal(rule: AgentRule, variables: dict[str, str]) -> str:
    """The rule's goal for these trigger variables (the sandbox of proto/templates.py); TemplateError when it fails."""
    spec = TemplateSpec(name=rule.name, version=rule.version, template=rule.goal, variables=sorted(variables))
    return compile_template(spec).render(variables)[1]


def opening(rule: AgentRule, goal: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": rule.system}, {"role": "user", "content": goal}]


def assistant(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
    }


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def repeats(messages: list[dict[str, Any]], calls: list[ToolCall]) -> bool:
    """Every call of this turn was already made in the run with the same arguments: a small model
    that loops on its last call instead of answering (its results are already in the conversation)."""
    made = {
        (c["name"], _canonical(c["arguments"]))
        for m in messages
        if m["role"] == "assistant"
        for c in m.get("tool_calls", ())
    }
    return bool(calls) and all((c.name, _canonical(c.arguments)) in made for c in calls)


ANSWER_NOW = (
    "Write the final answer to the goal in one or two plain sentences, from what was done above. "
    "Do not call tools and do not write JSON."
)


def answer_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as one plain request for the answer: the goal, then each call and its result
    in words, with no tool markup for a small model to copy (it repeats calls it sees in markup)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    goal = next((m["content"] for m in messages if m["role"] == "user"), "")
    done: list[str] = []
    for m in messages:
        if m["role"] == "assistant":
            done.extend(f"- called {c['name']} {c['arguments']}" for c in m.get("tool_calls", ()))
        elif m["role"] == "tool":
            result = str(m.get("content", "")).split("\n[end of data]")[0].split("\n", 1)[-1]
            done.append(f"  result: {result[:600]}")
    body = f"Goal: {goal}\n\nWhat was done:\n" + "\n".join(done) + f"\n\n{ANSWER_NOW}"
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": body}]


def tool_result(call_id: str, name: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "content": text, "tool_call_id": call_id, "name": name}


def to_turns(messages: list[dict[str, Any]]) -> tuple[ChatTurn, ...]:
    return tuple(
        ChatTurn(
            role=m["role"],
            content=m.get("content", ""),
            tool_calls=tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in m.get("tool_calls", ())),
            tool_call_id=m.get("tool_call_id", ""),
            name=m.get("name", ""),
        )
        for m in messages
    )


def tool_defs(rule: AgentRule, tools: dict[str, ToolSpec]) -> tuple[ToolDef, ...]:
    """The rule's tools as the model sees them (only those: a tool the rule lacks is never offered)."""
    return tuple(
        ToolDef(name=t, description=tools[t].description, parameters=tools[t].parameters)
        for t in rule.tools
        if t in tools
    )


def spec_of(run: RunRow) -> tuple[AgentRule, dict[str, ToolSpec]]:
    """The rule and tools a run started with (a later push does not change a run under way)."""
    rule = AgentRule.model_validate(run.spec["rule"])
    tools = {n: ToolSpec.model_validate(t) for n, t in run.spec["tools"].items()}
    return rule, tools


def snapshot(rule: AgentRule, tools: dict[str, ToolSpec]) -> dict[str, Any]:
    return {
        "rule": rule.model_dump(mode="json"),
        "tools": {t: tools[t].model_dump(mode="json") for t in rule.tools if t in tools},
    }


def step(index: int, kind: str, **fields: Any) -> AgentStep:
    detail = str(fields.pop("detail", ""))[:MAX_DETAIL_CHARS]
    return AgentStep(index=index, kind=kind, detail=detail, ts=time.time(), **fields)  # type: ignore[arg-type]


def report(node_id: str, run: RunRow, steps: list[AgentStep], pending: Approval | None) -> AgentRunReport:
    request = None
    if pending is not None and pending.state == "pending":
        request = ApprovalRequest(
            run_id=pending.run_id,
            step=pending.step,
            tool=pending.tool,
            arguments=pending.arguments,
            why=pending.why,
            expires_at=pending.expires_at,
        )
    return AgentRunReport(
        node_id=node_id,
        run_id=run.id,
        rule=run.rule,
        rule_version=run.rule_version,
        trigger=run.trigger,
        state=run.state,
        reason=run.reason,
        answer=run.answer,
        steps=steps[-MAX_STEPS_REPORTED:],
        pending=request,
        started=run.started,
        ended=run.ended,
    )
