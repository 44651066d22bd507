"""What a request says about tools, checked: every refusal is an InvalidRequest naming the field.

Nothing is changed silently: a named tool that is not among the tools, a `tool_choice` without
tools, tools beside a `json_schema`, a `tool` message answering no earlier call — each is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.grammar import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH
from edgefleet.node.tool_calls.grammar import call_grammar
from edgefleet.node.tool_calls.types import MODES, ToolCall, ToolChoice, ToolDef, Turn
from edgefleet.proto.input_limits import brief, json_depth

MAX_TOOLS = 32
MAX_DESCRIPTION_CHARS = 4096
MAX_ARGUMENTS_BYTES = 64 * 1024
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_tools(
    tools: Sequence[ToolDef], choice: ToolChoice | None, json_schema: str, unconstrained: bool
) -> ToolChoice:
    """Check the tools and the choice among them; returns the choice in effect (auto by default)."""
    if not tools:
        if choice is not None:
            raise InvalidRequest("tool_choice needs tools; give tools or leave tool_choice out")
        if unconstrained:
            raise InvalidRequest("tools_unconstrained needs tools")
        return ToolChoice("none")
    if json_schema:
        raise InvalidRequest("json_schema and tools cannot be combined: give one of them")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"tools: at most {MAX_TOOLS} tools, got {len(tools)}")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        check_tool(i, tool)
        if tool.name in seen:
            raise InvalidRequest(f"tools[{i}].function.name {brief(tool.name)} is given twice; names must be unique")
        seen.add(tool.name)
    call_grammar(tuple(tools))  # what the converter cannot express is refused now, naming the tool
    choice = choice or ToolChoice()
    if choice.mode not in MODES:
        raise InvalidRequest(f"tool_choice.mode {brief(choice.mode)} is not one of {', '.join(MODES)}")
    if choice.mode == "function":
        if choice.function not in seen:
            names = ", ".join(t.name for t in tools)
            raise InvalidRequest(
                f"tool_choice.function {brief(choice.function)} is not one of the tools given ({brief(names, 200)})"
            )
    elif choice.function:
        raise InvalidRequest(f"tool_choice.function is only for mode function (mode is {brief(choice.mode)})")
    return choice


def check_tool(i: int, tool: ToolDef) -> None:
    field = f"tools[{i}].function"
    if not NAME.match(tool.name):
        raise InvalidRequest(f"{field}.name {brief(tool.name)} must be 1 to 64 letters, digits, '_' or '-'")
    if len(tool.description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(
            f"{field}.description is {len(tool.description)} characters; at most {MAX_DESCRIPTION_CHARS}"
        )
    params: Any = tool.parameters
    if not isinstance(params, dict):
        raise InvalidRequest(f"{field}.parameters must be a JSON object schema")
    text = json.dumps(params)
    if len(text) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{field}.parameters is {len(text)} bytes; at most {MAX_SCHEMA_BYTES}")
    if json_depth(text) > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"{field}.parameters nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        jsonschema.Draft202012Validator.check_schema(params)
    except jsonschema.SchemaError as e:
        raise InvalidRequest(f"{field}.parameters is not a valid JSON schema: {brief(e.message, 200)}") from e
    kind = params.get("type", "object" if params else None)
    if params and kind != "object":
        raise InvalidRequest(f"{field}.parameters must be an object schema (type: object), got type {brief(kind)}")


def check_messages(turns: Sequence[Turn]) -> None:
    """Assistant calls well formed; each `tool` message answers a call of an earlier assistant message."""
    calls: dict[str, str] = {}
    for i, t in enumerate(turns):
        if t.tool_calls and t.role != "assistant":
            raise InvalidRequest(f"messages[{i}].tool_calls: only assistant messages carry tool calls")
        for j, call in enumerate(t.tool_calls):
            field = f"messages[{i}].tool_calls[{j}]"
            if not call.id:
                raise InvalidRequest(f"{field}.id is empty")
            if not NAME.match(call.name):
                raise InvalidRequest(f"{field}.name {brief(call.name)} must be 1 to 64 letters, digits, '_' or '-'")
            if not isinstance(arguments(call, field), dict):
                raise InvalidRequest(f"{field}.arguments must be a JSON object")
            calls[call.id] = call.name
        if t.role == "tool":
            if not t.tool_call_id:
                raise InvalidRequest(f"messages[{i}].tool_call_id is empty; a tool message answers a call")
            if t.tool_call_id not in calls:
                raise InvalidRequest(
                    f"messages[{i}].tool_call_id {brief(t.tool_call_id)} is not the id of a call "
                    "in an earlier assistant message"
                )
            if t.name and t.name != calls[t.tool_call_id]:
                raise InvalidRequest(
                    f"messages[{i}].name {brief(t.name)} is not the name of call {brief(t.tool_call_id)} "
                    f"({brief(calls[t.tool_call_id])})"
                )
        elif t.tool_call_id:
            raise InvalidRequest(f"messages[{i}].tool_call_id is only for tool messages (role is {brief(t.role)})")


def arguments(call: ToolCall, field: str) -> Any:
    """A call's arguments parsed (empty text: no arguments)."""
    if not call.arguments.strip():
        return {}
    if len(call.arguments) > MAX_ARGUMENTS_BYTES:
        raise InvalidRequest(f"{field}.arguments is {len(call.arguments)} characters; at most {MAX_ARGUMENTS_BYTES}")
    if json_depth(call.arguments) > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"{field}.arguments nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        return json.loads(call.arguments)
    except ValueError as e:
        raise InvalidRequest(f"{field}.arguments is not JSON: {brief(str(e), 120)}") from e
