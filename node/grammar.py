"""JSON schema → GBNF grammar, checked and compiled once per schema.

Compiling a large schema takes milliseconds of pure Python; a sensor rule sends the same schema
with every message and clients repeat theirs, so compiled grammars are kept by the schema's
sha256 (least recently used out first). Only valid schemas are kept; an invalid one is refused
each time with the same message.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

import jsonschema
from llama_cpp.llama_grammar import json_schema_to_gbnf

from edgefleet.node.errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024


def compile_schema(json_schema: str) -> str:
    """Validate a JSON schema and turn it into a GBNF grammar; InvalidRequest says what is wrong."""
    if len(json_schema.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"json_schema is over {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(json_schema)
    except ValueError as e:
        raise InvalidRequest(f"json_schema is not valid JSON: {e}") from e
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema must be a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequest(f"json_schema is not a valid JSON schema: {e.message}") from e
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises plain exceptions for what it cannot express
        raise InvalidRequest(f"json_schema cannot be turned into a grammar: {e}") from e


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
