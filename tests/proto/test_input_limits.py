"""JSON depth and size limits without recursion, and short quotes of what clients send."""

from __future__ import annotations

import pytest

from edgefleet.proto.input_limits import JsonLimitError, brief, json_depth, loads_bounded


def test_depth_counts_nesting_and_ignores_brackets_inside_strings() -> None:
    assert json_depth("12") == 0
    assert json_depth('{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_depth('["\\"[", [[]]]') == 3


def test_a_document_100k_levels_deep_is_refused_without_recursion() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(JsonLimitError, match="payload nests 100000 levels deep; at most 64"):
        loads_bounded(deep, "payload", max_bytes=1_000_000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * 11, "is 11 bytes; at most 10"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{oops", "not valid JSON"),
    ],
)
def test_too_big_not_utf8_or_not_json_is_named(data: bytes, message: str) -> None:
    with pytest.raises(JsonLimitError, match=message):
        loads_bounded(data, "payload", max_bytes=10)


def test_loads_what_is_within_the_limits() -> None:
    assert loads_bounded(b'{"a": [1, 2]}', "payload", max_bytes=100) == {"a": [1, 2]}


def test_brief_keeps_short_values_and_cuts_long_ones() -> None:
    assert brief("pump-1") == "'pump-1'"
    long = brief("x" * 100_000)
    assert long.endswith("… (100000 characters)") and len(long) < 100
