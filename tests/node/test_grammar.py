"""JSON schemas become grammars once per schema; a bad schema is refused with the reason every time."""

from __future__ import annotations

import json

import pytest

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.grammar import GrammarCache, compile_schema

SCHEMA = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})


def test_a_schema_is_compiled_once_and_then_served_from_the_cache() -> None:
    cache = GrammarCache()
    first = cache.grammar(SCHEMA)
    assert "root" in first and first == compile_schema(SCHEMA)
    for _ in range(5):
        assert cache.grammar(SCHEMA) == first
    assert cache.compiled == 1 and cache.hits == 5


def test_the_least_recently_used_grammar_leaves_first() -> None:
    cache = GrammarCache(capacity=2)
    schemas = [json.dumps({"type": "object", "properties": {f"f{i}": {"type": "integer"}}}) for i in range(3)]
    cache.grammar(schemas[0])
    cache.grammar(schemas[1])
    cache.grammar(schemas[0])  # 0 is used again: 1 is now the oldest
    cache.grammar(schemas[2])
    cache.grammar(schemas[0])
    assert cache.compiled == 3 and cache.hits == 2
    cache.grammar(schemas[1])
    assert cache.compiled == 4, "schema 1 was evicted and compiled again"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"type": "nonsense"}), "not a valid JSON schema"),
        ("{" + '"a": 1,' * 20000 + '"b": 2}', "at most 65536"),
    ],
)
def test_a_bad_schema_is_refused_each_time_and_never_cached(schema: str, message: str) -> None:
    cache = GrammarCache()
    for _ in range(2):
        with pytest.raises(InvalidRequest, match=message):
            cache.grammar(schema)
    assert cache.compiled == 0
