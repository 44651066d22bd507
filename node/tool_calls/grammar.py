"""The grammar of a tool call: tools' schemas in, GBNF out (llama.cpp's SchemaConverter, as node/grammar.py).

One call is `<tool_call>\\n{"name": "<tool>", "arguments": <that tool's arguments>}\\n</tool_call>`,
an alternation with one branch per tool, so a name always comes with its own tool's arguments. An
answer is one call or, parallel, up to `max_calls` calls separated by a newline; when the grammar is
complete only the end of generation is left, so nothing follows the last call.

Argument strings without a `maxLength` get one (STRING_MAX_CHARS), arrays without `maxItems` get
MAX_ITEMS: a small model that rambles inside a string still has to close it, and the call, within
a bounded number of tokens. What a schema already bounds stays as it is; the bounds apply to the
grammar only (the tool's schema that validates the call is the caller's, unchanged).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.grammar import _LocalRefs
from edgefleet.node.tool_calls.types import CALL_CLOSE, CALL_OPEN, ToolDef
from edgefleet.proto.input_limits import brief

STRING_MAX_CHARS = 200
MAX_ITEMS = 16
MAX_PARALLEL_CALLS = 8

# Between JSON tokens: never an unbounded run. A bare call (no markup) may be pretty-printed, as
# models write JSON in a code block: a newline and up to 20 spaces or tabs.
COMPACT_SPACE = '" "?'  # inside `<tool_call>`: at most one space (newlines there made SmolLM2 call again and again)
WIDE_SPACE = r'| " " | "\n" [ \t]{0,20}'
SPACE_REGEX = r"( |\n[ \t]{0,20})?"  # WIDE_SPACE as a regex (plan.py's bare trigger)
COMPACT_REGEX = "( )?"  # COMPACT_SPACE as a regex
STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_FREE_STRING_KEYS = ("maxLength", "enum", "const", "pattern", "format")


def bounded(schema: Any) -> Any:
    """A copy of `schema` for the grammar: every string with a maxLength, every array a maxItems.

    Also what llama.cpp's converter reads wrongly: a list of types becomes an anyOf of one schema
    per type (the converter drops every other keyword of a type list, maxLength with it), and an
    empty `items` (any value) becomes a bounded scalar or any object (it fails on `items: {}`).
    Each only narrows what the grammar lets through, so what it lets through still validates.
    """
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = dict(schema)
    types = node.get("type")
    if isinstance(types, list):
        rest = {k: v for k, v in node.items() if k != "type"}
        return {"anyOf": [bounded({**rest, "type": t}) for t in types]}
    if types == "string" and not any(k in node for k in _FREE_STRING_KEYS):
        node["maxLength"] = max(STRING_MAX_CHARS, int(node.get("minLength", 0) or 0))
    if types == "array" and "items" in node:
        if node["items"] in ({}, True):
            node["items"] = _ANY_ITEM
        if "maxItems" not in node:
            node["maxItems"] = max(MAX_ITEMS, int(node.get("minItems", 0) or 0))
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            node[key] = {k: bounded(v) for k, v in value.items()}  # property names are not schemas
        elif key not in ("enum", "const", "default", "examples", "required") and isinstance(value, dict | list):
            node[key] = bounded(value)
    return node


_ANY_ITEM = {
    "anyOf": [
        {"type": "string", "maxLength": STRING_MAX_CHARS},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "object"},
    ]
}


def object_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """The arguments' schema as the grammar reads it: no parameters means an empty object."""
    if not parameters:
        return {"type": "object", "properties": {}}
    return parameters


def literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def call_grammar(tools: tuple[ToolDef, ...], only: str = "", max_calls: int = 1, bare: bool = False) -> str:
    """GBNF whose root is 1..max_calls calls of `tools` (only the tool named `only`, when given).

    `bare`: the root may also be one call object without the markup (what a model that writes its
    call as plain JSON, or in a ```json block, starts with; see plan.py's bare trigger)."""
    key = json.dumps(
        [[i, t.name, t.parameters] for i, t in enumerate(tools) if not only or t.name == only],
        ensure_ascii=False,
    )  # not sorted: the order of properties is the order the grammar asks for them
    return _compile(key, max_calls, bare)


@lru_cache(maxsize=64)
def _compile(key: str, max_calls: int, bare: bool) -> str:
    entries: list[list[Any]] = json.loads(key)
    rules = _call_object(entries, COMPACT_SPACE)
    one = f"{literal(CALL_OPEN + chr(10))} call-object {literal(chr(10) + CALL_CLOSE)}"
    rules["tool-call"] = one
    more = f' ( "\\n" tool-call ){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    rules["root"] = f"tool-call{more}"
    if bare:  # pretty-printed JSON, as a model writes it in a code block: wider whitespace
        wide = _call_object(entries, WIDE_SPACE)
        rules.update({f"w-{name}": _renamed(body, set(wide)) for name, body in wide.items()})
        rules["root"] += " | w-call-object"
    return "\n".join(f"{name} ::= {body}" for name, body in sorted(rules.items()))


def _call_object(entries: list[list[Any]], space: str) -> dict[str, str]:
    """The rules of one call object (`call-object`), one branch per tool, `space` between JSON tokens."""
    converter = _LocalRefs(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False)
    branches: list[str] = []
    for i, name, parameters in entries:
        field = f"tools[{i}].function.parameters"
        try:
            args = bounded(object_schema(parameters))
            converter.resolve_refs(args, f"tool{i}")
            schema = {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": args},
                "required": ["name", "arguments"],
            }
            branches.append(converter.visit(schema, f"call{len(branches)}"))
        except InvalidRequest as e:
            raise InvalidRequest(f"{field}: {str(e).removeprefix('json_schema ')}") from e
        except RecursionError as e:
            raise InvalidRequest(f"{field}: too deeply nested to turn into a grammar") from e
        except Exception as e:  # the converter raises plain exceptions for what it cannot express
            raise InvalidRequest(f"{field}: cannot be turned into a grammar: {brief(str(e), 200)}") from e
    rules: dict[str, str] = dict(converter._rules)
    if "char" in rules:  # JSON strings: no raw control characters (the stock rule lets them in)
        rules["char"] = STRICT_CHAR
    rules["space"] = space
    rules["call-object"] = " | ".join(branches)
    return rules


_GBNF_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[0-9,]*\}|[A-Za-z0-9-]+|\s+|.')


def _renamed(body: str, names: set[str]) -> str:
    """A rule body with its references to `names` prefixed `w-` (literals and classes left alone)."""
    return "".join(f"w-{t}" if t in names else t for t in _GBNF_TOKEN.findall(body))
