"""JSON schema → GBNF grammar, checked and compiled once per schema.

Compiling a large schema takes milliseconds of pure Python; a sensor rule sends the same schema
with every message and clients repeat theirs, so compiled grammars are kept by the schema's
sha256 (least recently used out first). Only valid schemas are kept; an invalid one is refused
each time with the same message.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import jsonschema
from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.numeric_ranges import has_bounds, numeric_rule
from edgefleet.proto.input_limits import JsonLimitError, brief, loads_bounded

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 64  # JSON nesting; an object property inside an object is two levels


def compile_schema(json_schema: str) -> str:
    """Validate a JSON schema and turn it into a GBNF grammar; InvalidRequest says what is wrong."""
    try:
        schema = loads_bounded(
            json_schema.encode("utf-8", "surrogatepass"), "json_schema", MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH
        )
    except JsonLimitError as e:
        raise InvalidRequest(str(e)) from e
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema must be a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequest(f"json_schema is not a valid JSON schema: {brief(e.message, 200)}") from e
    converter = _LocalRefs(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter.resolve_refs(schema, "schema")
    try:
        converter.visit(schema, "")
        return str(converter.format_grammar())
    except RecursionError as e:
        raise InvalidRequest("json_schema is too deeply nested to turn into a grammar") from e
    except Exception as e:  # the converter raises plain exceptions for what it cannot express
        raise InvalidRequest(f"json_schema cannot be turned into a grammar: {brief(str(e), 200)}") from e


class _LocalRefs(SchemaConverter):
    """llama.cpp's converter with a resolver for local `$ref`s (`#`, `#/$defs/…`) that also
    follows references inside a schema whose root is a reference (the stock resolver stops there),
    and names what is wrong: a reference to nothing, a remote reference, or a loop of references.
    Bounded integers and numbers are held to their bounds (node/numeric_ranges.py): the stock
    converter ignores minimum and maximum."""

    def visit(self, schema: dict[str, Any], name: str) -> str:
        if isinstance(schema, dict) and has_bounds(schema) and not any(k in schema for k in ("enum", "const", "$ref")):
            try:
                body = numeric_rule(schema)
            except ValueError as e:
                raise InvalidRequest(f"json_schema: {e}") from e
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            return str(self._add_rule(rule_name, f"{body} space"))
        return str(super().visit(schema, name))

    def resolve_refs(self, schema: dict[str, Any], url: str) -> dict[str, Any]:
        def target_of(ref: str) -> dict[str, Any]:
            if ref != "#" and not ref.startswith("#/"):
                raise InvalidRequest(f"json_schema $ref {brief(ref)} is not local; only #/… references are supported")
            node: Any = schema
            for part in ref[2:].split("/") if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise InvalidRequest(f"json_schema $ref {brief(ref)} points at nothing ({brief(part)} not found)")
            if not isinstance(node, dict):
                raise InvalidRequest(f"json_schema $ref {brief(ref)} does not point at a schema object")
            return node

        pending: list[Any] = [schema]
        while pending:  # no recursion: depth was checked, but a wide schema stays cheap too
            n = pending.pop()
            if isinstance(n, list):
                pending.extend(n)
            elif isinstance(n, dict):
                ref = n.get("$ref")
                if isinstance(ref, str):
                    # The converter names a rule after the reference's last segment: "#" needs one.
                    full = f"{url}#/schema-root" if ref == "#" else f"{url}{ref}"
                    if full not in self._refs:
                        self._refs[full] = target_of(ref)
                    n["$ref"] = full
                pending.extend(v for k, v in n.items() if k != "$ref")
        for start in self._refs:
            chain = [start]
            target = self._refs[start]
            while isinstance(target.get("$ref"), str):
                nxt = target["$ref"]
                if nxt in chain:
                    loop = " -> ".join(r.removeprefix(url) for r in [*chain, nxt])
                    raise InvalidRequest(
                        f"json_schema $ref loop {brief(loop, 200)}: each is only a reference to the next, "
                        "so no value can match; put an object or array between"
                    )
                chain.append(nxt)
                target = self._refs[nxt]
        return schema


class GrammarCache:
    """Compiled grammars by schema sha256; thread-safe (gRPC workers and sensor threads share it)."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._grammars: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.compiled = 0

    def grammar(self, json_schema: str) -> str:
        key = hashlib.sha256(json_schema.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            found = self._grammars.get(key)
            if found is not None:
                self._grammars.move_to_end(key)
                self.hits += 1
                return found
        grammar = compile_schema(json_schema)  # outside the lock: two first uses may both compile
        with self._lock:
            self.compiled += 1
            self._grammars[key] = grammar
            while len(self._grammars) > self.capacity:
                self._grammars.popitem(last=False)
        return grammar
