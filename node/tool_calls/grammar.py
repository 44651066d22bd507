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

import copy
import json
from functools import lru_cache
from typing import Any

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.grammar import _LocalRefs
from edgefleet.node.tool_calls.types import CALL_CLOSE, CALL_OPEN, ToolDef
from edgefleet.proto.input_limits import brief

STRING_MAX_CHARS = 200
MAX_ITEMS = 16
MAX_PARALLEL_CALLS = 8

# Between JSON tokens: nothing, a space, or a newline and up to 20 spaces or tabs (pretty-printed
# JSON, as models write it in a code block), never an unbounded run.
SPACE = r'| " " | "\n" [ \t]{0,20}'
SPACE_REGEX = r"( |\n[ \t]{0,20})?"  # the same, as a regex (plan.py's triggers)
STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_FREE_STRING_KEYS = ("maxLength", "enum", "const", "pattern", "format")


def bounded(schema: Any) -> Any:
    """A copy of `schema` where every string has a maxLength and every array a maxItems."""
    out = copy.deepcopy(schema)
    pending: list[Any] = [out]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        types = node.get("type")
        kinds = set(types) if isinstance(types, list) else {types}
        if "string" in kinds and not any(k in node for k in _FREE_STRING_KEYS):
            node["maxLength"] = max(STRING_MAX_CHARS, int(node.get("minLength", 0) or 0))
        if "array" in kinds and "items" in node and "maxItems" not in node:
            node["maxItems"] = max(MAX_ITEMS, int(node.get("minItems", 0) or 0))
        for key, value in node.items():
            if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
                pending.extend(value.values())  # names of properties are not schemas; their values are
            elif key not in ("enum", "const", "default", "examples", "required") and isinstance(value, dict | list):
                pending.append(value)
    return out


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
    converter = _LocalRefs(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False)
    branches = []
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
    if "char" in converter._rules:  # JSON strings: no raw control characters (the stock rule lets them in)
        converter._rules["char"] = STRICT_CHAR
    converter._rules["space"] = SPACE
    converter._add_rule("call-object", " | ".join(branches))
    one = f"{literal(CALL_OPEN + chr(10))} call-object {literal(chr(10) + CALL_CLOSE)}"
    converter._add_rule("tool-call", one)
    more = f' ( "\\n" tool-call ){{0,{max_calls - 1}}}' if max_calls > 1 else ""
    converter._add_rule("root", f"tool-call{more}" + (" | call-object" if bare else ""))
    return str(converter.format_grammar())
