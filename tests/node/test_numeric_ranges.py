"""Bounded integers and numbers in a JSON schema are held to their bounds by the grammar.

The grammar expressions are checked against every value around the bounds (turned into a regular
expression, the same language), and on the real model: sampled at temperature 1.5 with different
seeds, every answer's numbers lie within the schema's bounds.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from edgefleet.node.numeric_ranges import integer_range, numeric_rule
from edgefleet.proto.v1 import inference_pb2 as pb


def _regex(expression: str) -> re.Pattern[str]:
    """A GBNF expression of literals, classes, groups, alternation and {m,n} as a Python regex."""
    text = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), expression)
    return re.compile("^(" + text.replace(" | ", "|").replace(" ", "") + ")$")


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0, 9), (1, 8), (17, 342), (0, 100), (5, 5), (-20, 7), (-300, -17), (100, 1000), (0, 65535), (999, 1001), (-1, 1)],
)
def test_an_integer_range_admits_exactly_its_integers(lo: int, hi: int) -> None:
    r = _regex(integer_range(lo, hi))
    for x in range(lo - 60, hi + 60):
        assert bool(r.match(str(x))) == (lo <= x <= hi), (lo, hi, x)
    assert not r.match(f"0{max(lo, 1)}")  # no leading zeros: not JSON


def test_one_sided_bounds() -> None:
    r = _regex(integer_range(1, None))
    assert r.match("1") and r.match("123456789") and not r.match("0") and not r.match("-3")
    r = _regex(integer_range(None, -2))
    assert r.match("-2") and r.match("-99999") and not r.match("-1") and not r.match("0")


@pytest.mark.parametrize(
    ("schema", "inside", "outside"),
    [
        (
            {"type": "number", "minimum": 0, "maximum": 40.5},
            ["0", "0.5", "39.99", "40", "12"],
            ["41", "40.6", "-0.5", "-1"],
        ),
        (
            {"type": "number", "minimum": -5, "maximum": 5},
            ["-5", "-4.5", "0.25", "4.9", "5"],
            ["-5.5", "5.1", "6", "-6"],
        ),
        (
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            ["0.5", "0.001"],
            ["0", "0.0", "1", "1.5", "-0.5"],
        ),
        (
            {"type": "number", "minimum": -2, "exclusiveMaximum": 0},
            ["-0.5", "-2", "-1.5", "-1"],
            ["0", "-0.0", "0.5", "-2.5"],
        ),
        ({"type": "integer", "exclusiveMinimum": 0, "maximum": 3}, ["1", "2", "3"], ["0", "4"]),
    ],
)
def test_a_bounded_number_admits_only_values_within_its_bounds(
    schema: dict[str, object], inside: list[str], outside: list[str]
) -> None:
    r = _regex(numeric_rule(schema))
    for v in inside:
        assert r.match(v), (schema, v)
    for v in outside:
        assert not r.match(v), (schema, v)


def test_the_model_keeps_to_the_bounds_even_sampling_hot(stub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "valve": {"type": "integer", "minimum": 1, "maximum": 8},
            "setpoint": {"type": "number", "minimum": 15, "maximum": 22.5},
            "offset": {"type": "integer", "minimum": -3, "maximum": 3},
        },
        "required": ["valve", "setpoint", "offset"],
        "additionalProperties": False,
    }
    for seed in range(4):
        req = pb.GenerateRequest(
            messages=[
                pb.ChatMessage(role="user", content="Pick a valve above 100, a setpoint of 99.5 and an offset of -40.")
            ],
            max_tokens=48,
            temperature=1.5,
            seed=seed,
            json_schema=json.dumps(schema),
        )
        text = "".join(c.text for c in stub.Generate(req, timeout=120))
        jsonschema.validate(json.loads(text), schema)
