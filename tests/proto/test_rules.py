"""Sensor rules: MQTT filters and matching, rule validation at push time, the result payload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.proto.payloads import PayloadError, parse_payload
from edgefleet.proto.rules import (
    RuleSpec,
    SensorResult,
    check_topic_filter,
    fixed_levels,
    shared_filter,
    topic_matches,
)


def rule(**changes: Any) -> RuleSpec:
    data: dict[str, Any] = {
        "name": "vibration",
        "version": "1",
        "topic_filter": "sensors/+/vibration",
        "template": "classify",
    }
    data.update(changes)
    return RuleSpec.model_validate(data)


@pytest.mark.parametrize(
    "good", ["sensors/+/vibration", "#", "+", "sensors/#", "a//b", "/leading", "+/+/#", "plant 7/ä/x", "a" * 256]
)
def test_good_filters_are_accepted(good: str) -> None:
    assert check_topic_filter(good) == good
    assert rule(topic_filter=good).topic_filter == good


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("", "empty"),
        ("a" * 257, "limit"),
        ("a/\0/b", "NUL"),
        ("$SYS/#", r"\$"),
        ("$share/g/sensors/#", r"\$"),
        ("sensors/a+/x", r"'\+' must be a whole level"),
        ("sensors/#/x", "'#' must be the whole last level"),
        ("sensors/x#", "'#' must be the whole last level"),
        ("sensors/++", r"'\+' must be a whole level"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_topic_filter(bad)
    with pytest.raises(ValidationError, match=words):
        rule(topic_filter=bad)


@pytest.mark.parametrize(
    ("flt", "topic", "matches"),
    [
        ("sensors/+/vibration", "sensors/m1/vibration", True),
        ("sensors/+/vibration", "sensors/m1/temp", False),
        ("sensors/+/vibration", "sensors/m1/vibration/x", False),
        ("sensors/+/vibration", "sensors/vibration", False),
        ("sensors/+/vibration", "sensors//vibration", True),  # '+' matches an empty level
        ("sensors/#", "sensors", True),  # '#' matches the parent level
        ("sensors/#", "sensors/a/b/c", True),
        ("sensors/#", "sensorsx/a", False),
        ("sensors/#", "other/a", False),
        ("#", "anything/at/all", True),
        ("#", "/leading", True),
        ("+", "one", True),
        ("+", "one/two", False),
        ("+/+", "/x", True),
        ("a/b", "a/b", True),
        ("a/b", "A/b", False),  # topics are case-sensitive
        ("a/b", "a/b/", False),
        ("#", "$SYS/broker/load", False),  # '$' topics are not matched by a leading wildcard
        ("+/broker/load", "$SYS/broker/load", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("a/+", "a/+", False),  # a topic never contains wildcards
        ("#", "", False),
    ],
)
def test_topic_matches_follows_mqtt(flt: str, topic: str, matches: bool) -> None:
    assert topic_matches(flt, topic) is matches


def test_shared_filter_wraps_a_valid_filter_for_a_valid_group() -> None:
    assert shared_filter("rules-vibration", "sensors/+/vibration") == "$share/rules-vibration/sensors/+/vibration"
    with pytest.raises(ValueError, match="share group"):
        shared_filter("a/b", "sensors/#")
    with pytest.raises(ValueError, match="'#'"):
        shared_filter("g", "sensors/#/x")


def test_fixed_levels() -> None:
    assert fixed_levels("sensors/+/vibration") == 3
    assert fixed_levels("sensors/#") is None


def test_a_full_rule_validates_and_round_trips_through_json() -> None:
    r = rule(
        variables={"reading": "payload.value", "machine": "topic[1]", "raw": "payload", "where": "topic"},
        max_tokens=32,
        temperature=0.7,
        seed=42,
        adapter="vib-lora",
        json_schema={"type": "object", "properties": {"alarm": {"type": "boolean"}}, "required": ["alarm"]},
        output_topic="answers/{level1}/{rule}/{node}/{source_id}",
        collection="manuals",
        top_k=4,
        max_payload_bytes=1024,
    )
    assert RuleSpec.model_validate_json(r.model_dump_json()) == r
    assert r.label == "vibration@1"


def test_defaults() -> None:
    r = rule()
    assert (r.max_tokens, r.temperature, r.seed, r.output_topic, r.max_payload_bytes) == (64, 0.0, None, None, 65536)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": "a/b"}, "rule name"),
        ({"version": "-1"}, "version"),
        ({"template": "../x"}, "template name"),
        ({"adapter": "a+b"}, "adapter name"),
        ({"collection": "#"}, "collection name"),
        ({"variables": {"not an id": "payload"}}, "identifier"),
        ({"variables": {"x": "body"}}, "not one of"),
        ({"variables": {"x": "payload."}}, "not one of"),
        ({"variables": {"x": "payload.a b"}}, "not one of"),
        ({"variables": {"x": "payload" + ".a" * 9}}, "not one of"),
        ({"variables": {"x": "topic[x]"}}, "not one of"),
        ({"variables": {"x": "topic.name"}}, "not one of"),
        ({"variables": {f"v{i}": "payload" for i in range(33)}}, "limit"),
        ({"variables": {"x": "topic[3]"}}, "out of range"),
        ({"variables": {"x": "topic[-4]"}}, "out of range"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1025}, "max_tokens"),
        ({"max_tokens": "64"}, "max_tokens"),  # strict: no coercion from strings
        ({"temperature": 2.5}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"max_payload_bytes": 256 * 1024 + 1}, "max_payload_bytes"),
        ({"json_schema": {"type": "no-such-type"}}, "not a valid JSON schema"),
        ({"json_schema": {"description": "x" * 20000}}, "characters"),
        ({"top_k": 3}, "top_k needs a collection"),
        ({"output_topic": ""}, "1-256"),
        ({"output_topic": "a" * 257}, "1-256"),
        ({"output_topic": "answers/+"}, "wildcards"),
        ({"output_topic": "answers/#"}, "wildcards"),
        ({"output_topic": "$SYS/x"}, r"\$"),
        ({"output_topic": "answers/{sensor}"}, "unknown placeholder"),
        ({"output_topic": "answers/{Rule}"}, "brace"),
        ({"output_topic": "answers/{rule!r}"}, "brace"),
        ({"output_topic": "answers/{rule"}, "brace"),
        ({"output_topic": "answers/{level3}"}, "out of range"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_bad_rules_are_refused_at_push_time(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        rule(**changes)


def test_topic_levels_beyond_a_hash_are_checked_per_message_not_at_push() -> None:
    r = rule(topic_filter="sensors/#", variables={"x": "topic[7]"}, output_topic="out/{level9}")
    assert r.variables == {"x": "topic[7]"}


def test_negative_levels_within_the_filter_are_accepted() -> None:
    assert rule(variables={"kind": "topic[-1]", "first": "topic[-3]"}).variables["kind"] == "topic[-1]"


def test_rules_are_frozen() -> None:
    r = rule()
    with pytest.raises(ValidationError, match="frozen"):
        r.max_tokens = 5


def test_sensor_result_is_a_versioned_payload() -> None:
    result = SensorResult(
        rule="vibration",
        rule_version="1",
        source_topic="sensors/m1/vibration",
        source_id="17",
        node_id="n1",
        model="qwen",
        template="classify@2",
        ok=True,
        answer_text='{"alarm": true}',
        answer_json={"alarm": True},
        queue_ms=1.5,
        ttft_ms=20.0,
        total_ms=80.0,
        prompt_tokens=30,
        completion_tokens=6,
    )
    raw = result.dumps()
    assert json.loads(raw)["v"] == 1
    assert parse_payload(SensorResult, raw) == result
    error = SensorResult(
        rule="vibration",
        rule_version="1",
        source_topic="sensors/m1/vibration",
        source_id="18",
        node_id="n1",
        ok=False,
        error_code="invalid_json",
        error="payload is not JSON",
    )
    assert parse_payload(SensorResult, error.dumps()).answer_json is None
    with pytest.raises(PayloadError, match="extra"):
        parse_payload(SensorResult, json.dumps({**json.loads(raw), "extra": 1}).encode())
