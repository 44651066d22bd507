"""OpenAI's tools on the front door: the request side (tools, tool_choice, parallel_tool_calls,
assistant `tool_calls` and `tool` messages) checked and mapped to the gRPC contract, and the
answer's ToolCallDeltas gathered back into OpenAI's `message.tool_calls` / `delta.tool_calls`.

Every call the node returns is enforced by a grammar from its tool's schema, so what cannot be
honoured is refused with a 400 naming the field, never silently changed: a tool type other than
`function`, a name OpenAI would refuse, a duplicate name, parameters that are not an object JSON
schema, a `tool_choice` naming no given tool, `tool_choice`/`parallel_tool_calls`/`tools_unconstrained`
without `tools`, a JSON `response_format` beside tools, and the deprecated `functions`/`function_call`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from edgefleet.proto.v1 import inference_pb2 as pb

MAX_TOOLS = 32  # the gRPC contract's bound
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_FIELDS = {"tools", "tool_choice", "parallel_tool_calls", "tools_unconstrained"}
LEGACY_FIELDS = {"functions", "function_call"}
CHOICE_MODES = ("auto", "none", "required")
# keys an assistant message may carry when a client sends back a message it got (OpenAI's own
# responses carry them): accepted only when empty, since nothing here could honour a value
EMPTY_ASSISTANT_KEYS = {"refusal", "function_call", "audio", "annotations"}


class ToolError(Exception):
    """A tools field that is wrong (openai_schema turns it into its BodyError: HTTP 400 naming `param`)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def refuse_legacy(body: dict[str, Any]) -> None:
    for key in sorted(LEGACY_FIELDS & body.keys()):
        raise ToolError(key, f"{key!r} is OpenAI's deprecated form of function calling: send 'tools' and 'tool_choice'")


def refuse_on_completions(body: dict[str, Any]) -> None:
    """/v1/completions (a raw prompt) has no conversation to carry calls: tools are chat-only."""
    refuse_legacy(body)
    for key in sorted(TOOL_FIELDS & body.keys()):
        raise ToolError(key, f"{key!r} is only for /v1/chat/completions: a raw prompt cannot carry tool calls")


def _schema(v: Any, where: str) -> str:
    """The parameters schema as JSON text ('' for none): an object schema that JSON Schema accepts."""
    if v is None:
        return ""
    if not isinstance(v, dict):
        raise ToolError(where, f"{where} must be a JSON schema object")
    if "type" in v and v["type"] != "object":
        raise ToolError(f"{where}.type", f"{where}.type must be 'object': a call's arguments are a JSON object")
    try:
        jsonschema.validators.validator_for(v, default=jsonschema.Draft202012Validator).check_schema(v)
        text = json.dumps(v, allow_nan=False)
    except jsonschema.SchemaError as e:
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        raise ToolError(f"{where}{at}", f"{where}{at} is not a valid JSON schema: {e.message}") from None
    except (ValueError, RecursionError) as e:
        raise ToolError(where, f"{where} cannot be used: {e}") from None
    return text


def _tool(t: Any, where: str) -> pb.Tool:
    if not isinstance(t, dict):
        raise ToolError(where, f"{where} must be an object {{'type': 'function', 'function': {{...}}}}")
    for key in t:
        if key not in ("type", "function"):
            raise ToolError(f"{where}.{key}", f"{where}.{key} is not supported (a tool has type and function)")
    if t.get("type") != "function":
        raise ToolError(f"{where}.type", f"{where}.type must be 'function', not {t.get('type')!r}")
    f = t.get("function")
    if not isinstance(f, dict):
        raise ToolError(f"{where}.function", f"{where}.function must be an object with a name")
    for key in f:
        if key not in ("name", "description", "parameters", "strict"):
            raise ToolError(f"{where}.function.{key}", f"{where}.function.{key} is not supported")
    name = f.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolError(
            f"{where}.function.name",
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-', not {name!r}",
        )
    description = f.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError(f"{where}.function.description", f"{where}.function.description must be a string")
    strict = f.get("strict")
    if strict is not None and not isinstance(strict, bool):  # calls are always held to the schema
        raise ToolError(f"{where}.function.strict", f"{where}.function.strict must be true or false")
    params = _schema(f.get("parameters"), f"{where}.function.parameters")
    return pb.Tool(name=name, description=description or "", parameters_json=params)


def _tools(v: Any) -> list[pb.Tool]:
    if not isinstance(v, list) or not v:
        raise ToolError("tools", "'tools' must be a non-empty list of {'type': 'function', 'function': {...}}")
    if len(v) > MAX_TOOLS:
        raise ToolError("tools", f"'tools' takes at most {MAX_TOOLS} tools, not {len(v)}")
    out: list[pb.Tool] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(v):
        tool = _tool(t, f"tools[{i}]")
        if tool.name in seen:
            raise ToolError(
                f"tools[{i}].function.name",
                f"tools[{i}].function.name {tool.name!r} is already tools[{seen[tool.name]}]'s: names must be unique",
            )
        seen[tool.name] = i
        out.append(tool)
    return out


def _choice(v: Any, names: set[str]) -> pb.ToolChoice:
    if isinstance(v, str):
        if v not in CHOICE_MODES:
            raise ToolError("tool_choice", f"'tool_choice' must be auto, none, required or a function, not {v!r}")
        return pb.ToolChoice(mode=v)
    if not isinstance(v, dict) or v.get("type") != "function" or not isinstance(v.get("function"), dict):
        raise ToolError(
            "tool_choice", "'tool_choice' must be auto, none, required or {'type': 'function', 'function': {'name'}}"
        )
    for key in v:
        if key not in ("type", "function"):
            raise ToolError(f"tool_choice.{key}", f"tool_choice.{key} is not supported")
    for key in v["function"]:
        if key != "name":
            raise ToolError(f"tool_choice.function.{key}", f"tool_choice.function.{key} is not supported")
    name = v["function"].get("name")
    if not isinstance(name, str) or name not in names:
        raise ToolError(
            "tool_choice.function.name",
            f"tool_choice.function.name {name!r} is none of the given tools ({', '.join(sorted(names))})",
        )
    return pb.ToolChoice(mode="function", function=name)


def _flag(body: dict[str, Any], key: str) -> bool | None:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise ToolError(key, f"{key!r} must be true or false")
    return v


def parse_tools(body: dict[str, Any], req: pb.GenerateRequest) -> None:
    """Fill `req`'s tools, tool_choice, parallel_tool_calls and tools_unconstrained from the body.
    `req.json_schema` must already be set (a JSON response_format cannot stand beside tools)."""
    refuse_legacy(body)
    parallel = _flag(body, "parallel_tool_calls")
    unconstrained = _flag(body, "tools_unconstrained")
    if body.get("tools") is None:
        for key in ("tool_choice", "parallel_tool_calls", "tools_unconstrained"):
            if body.get(key) is not None:
                raise ToolError(key, f"{key!r} needs 'tools'")
        return
    tools = _tools(body["tools"])
    if req.json_schema:
        raise ToolError(
            "response_format",
            "a JSON 'response_format' cannot be honoured beside 'tools' (an answer is either calls or text)",
        )
    req.tools.extend(tools)
    if body.get("tool_choice") is not None:
        req.tool_choice.CopyFrom(_choice(body["tool_choice"], {t.name for t in tools}))
    if parallel is not None:
        req.parallel_tool_calls = parallel
    req.tools_unconstrained = bool(unconstrained)


# -- messages ------------------------------------------------------------------------------------------------
def _call(c: Any, where: str) -> pb.ToolCall:
    if not isinstance(c, dict):
        raise ToolError(where, f"{where} must be an object {{id, type: 'function', function: {{name, arguments}}}}")
    for key in c:
        if key not in ("id", "type", "function", "index"):  # `index`: a streamed delta sent back as it came
            raise ToolError(f"{where}.{key}", f"{where}.{key} is not supported")
    if not isinstance(c.get("id"), str) or not c["id"]:
        raise ToolError(f"{where}.id", f"{where}.id must be a non-empty string")
    if c.get("type", "function") != "function":
        raise ToolError(f"{where}.type", f"{where}.type must be 'function'")
    f = c.get("function")
    if not isinstance(f, dict):
        raise ToolError(f"{where}.function", f"{where}.function must be an object with name and arguments")
    for key in f:
        if key not in ("name", "arguments"):
            raise ToolError(f"{where}.function.{key}", f"{where}.function.{key} is not supported")
    name = f.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolError(f"{where}.function.name", f"{where}.function.name must be a function name, not {name!r}")
    args = f.get("arguments")
    if not isinstance(args, str):
        raise ToolError(f"{where}.function.arguments", f"{where}.function.arguments must be a JSON string")
    try:
        parsed = json.loads(args)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise ToolError(f"{where}.function.arguments", f"{where}.function.arguments must be a JSON object's text")
    return pb.ToolCall(id=c["id"], name=name, arguments=args)


def assistant_calls(m: dict[str, Any], where: str, calls: dict[str, str]) -> list[pb.ToolCall]:
    """An assistant message's `tool_calls` (recorded in `calls`: id → name, for later tool messages)."""
    for key in sorted(EMPTY_ASSISTANT_KEYS & m.keys()):
        if m[key] not in (None, [], ""):
            raise ToolError(f"{where}.{key}", f"{where}.{key} is not supported (only null or empty)")
    v = m.get("tool_calls")
    if v is None:
        return []
    if not isinstance(v, list) or not v:
        raise ToolError(f"{where}.tool_calls", f"{where}.tool_calls must be a non-empty list of calls")
    out = [_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(v)]
    for j, c in enumerate(out):
        if c.id in calls:
            raise ToolError(f"{where}.tool_calls[{j}].id", f"{where}.tool_calls[{j}].id {c.id!r} is used twice")
        calls[c.id] = c.name
    return out


def tool_reply(m: dict[str, Any], where: str, calls: dict[str, str]) -> tuple[str, str]:
    """A `tool` message's (tool_call_id, name): the id one of an earlier assistant message's calls."""
    cid = m.get("tool_call_id")
    if not isinstance(cid, str) or not cid:
        raise ToolError(f"{where}.tool_call_id", f"{where}.tool_call_id must be the id of the call it answers")
    if cid not in calls:
        raise ToolError(f"{where}.tool_call_id", f"{where}.tool_call_id {cid!r} is no earlier assistant message's call")
    name = m.get("name")
    if name is not None and name != calls[cid]:
        raise ToolError(f"{where}.name", f"{where}.name {name!r} is not the name of call {cid!r} ({calls[cid]!r})")
    return cid, calls[cid]


# -- answers -------------------------------------------------------------------------------------------------
def gather(chunks: list[pb.GenerateChunk]) -> list[dict[str, Any]]:
    """The whole calls of an answer, in index order, as OpenAI's `message.tool_calls`."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for d in c.tool_calls:
            call = calls.setdefault(d.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = call["id"] or d.id
            call["function"]["name"] = call["function"]["name"] or d.name
            call["function"]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


class DeltaMapper:
    """ToolCallDeltas → `delta.tool_calls` entries: id, type and name once (with the first
    arguments), then the same index with more `function.arguments`."""

    def __init__(self) -> None:
        self.opened: set[int] = set()

    def entries(self, deltas: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for d in deltas:
            if d.index not in self.opened:
                self.opened.add(d.index)
                fn = {"name": d.name, "arguments": d.arguments}
                out.append({"index": d.index, "id": d.id, "type": "function", "function": fn})
            elif d.arguments:
                out.append({"index": d.index, "function": {"arguments": d.arguments}})
        return out
