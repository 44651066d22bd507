"""From an MQTT message to a message id, template variables and an answer topic (pure, no broker)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from edgefleet.node.sensors.messages import MessageError, extract_variables, message_id, output_topic, topic_safe
from edgefleet.proto.rules import RuleSpec, check_topic_filter

TOPIC = "sensors/m1/vibration"


def rule(**changes: Any) -> RuleSpec:
    data: dict[str, Any] = {
        "name": "vibration",
        "version": "1",
        "topic_filter": "sensors/+/vibration",
        "template": "classify",
    }
    data.update(changes)
    return RuleSpec.model_validate(data)


def test_message_id_prefers_the_user_property_then_the_json_id_then_a_hash() -> None:
    payload = json.dumps({"id": "r-17", "value": 3}).encode()
    assert message_id(TOPIC, payload, [("other", "x"), ("msg-id", "p-1"), ("msg-id", "p-2")]) == "p-1"
    assert message_id(TOPIC, payload, [("other", "x")]) == "r-17"
    assert message_id(TOPIC, json.dumps({"id": 17}).encode(), []) == "17"
    expected = "sha256:" + hashlib.sha256(TOPIC.encode() + b"\0" + b"raw bytes").hexdigest()
    assert message_id(TOPIC, b"raw bytes", []) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": 1}',  # no id
        b'{"id": null}',
        b'{"id": true}',  # a boolean is not an id
        b'{"id": 1.5}',
        b'{"id": ""}',
        b'{"id": {"a": 1}}',
        json.dumps({"id": "x" * 129}).encode(),
        b'{"id": "a\\nb"}',  # control characters
        b'[{"id": "in-a-list"}]',
        b'{"id": "broken',
        b"\xff\xfe",
    ],
)
def test_unusable_json_ids_fall_back_to_the_hash(payload: bytes) -> None:
    assert message_id(TOPIC, payload, []).startswith("sha256:")


def test_an_unusable_user_property_falls_back_to_the_json_id() -> None:
    assert message_id(TOPIC, b'{"id": "j"}', [("msg-id", "")]) == "j"
    assert message_id(TOPIC, b'{"id": "j"}', [("msg-id", "x" * 129)]) == "j"


def test_the_hash_depends_on_topic_and_payload() -> None:
    ids = {message_id(t, p, []) for t in ("a/b", "a/c") for p in (b"1", b"2")}
    assert len(ids) == 4
    assert message_id("a/b", b"1", []) == message_id("a/b", b"1", [])


def test_variables_from_payload_fields_and_topic_levels() -> None:
    r = rule(
        variables={
            "raw": "payload",
            "rms": "payload.rms",
            "axis": "payload.axes.0.name",
            "alarm": "payload.alarm",
            "spectrum": "payload.spectrum",
            "meta": "payload.meta",
            "count": "payload.count",
            "machine": "topic[1]",
            "kind": "topic[-1]",
            "where": "topic",
        }
    )
    payload = {
        "rms": 3.25,
        "axes": [{"name": "x"}],
        "alarm": False,
        "spectrum": [1, 2],
        "meta": {"unit": "mm/s", "ü": "ä"},
        "count": 7,
    }
    raw = json.dumps(payload).encode()
    assert extract_variables(r, TOPIC, raw) == {
        "raw": raw.decode(),
        "rms": "3.25",
        "axis": "x",
        "alarm": "false",
        "spectrum": "[1,2]",
        "meta": '{"unit":"mm/s","ü":"ä"}',
        "count": "7",
        "machine": "m1",
        "kind": "vibration",
        "where": TOPIC,
    }


def test_a_rule_reading_only_the_topic_takes_binary_payloads() -> None:
    assert extract_variables(rule(variables={"m": "topic[1]"}), TOPIC, b"\xff\x00") == {"m": "m1"}


def test_plain_text_payloads_work_with_the_payload_source() -> None:
    assert extract_variables(rule(variables={"text": "payload"}), TOPIC, b"12.5 mm/s") == {"text": "12.5 mm/s"}


@pytest.mark.parametrize(
    ("variables", "topic", "payload", "code"),
    [
        ({"x": "payload"}, TOPIC, b"x" * 65537, "payload_too_large"),
        ({"x": "topic[1]"}, TOPIC, b"x" * 65537, "payload_too_large"),  # the limit holds for every rule
        ({"x": "payload"}, TOPIC, b"\xff\xfe", "invalid_utf8"),
        ({"x": "payload.a"}, TOPIC, b"\xff\xfe", "invalid_utf8"),
        ({"x": "payload.a"}, TOPIC, b"{oops", "invalid_json"),
        ({"x": "payload.a"}, TOPIC, b"12.5", "invalid_json"),
        ({"x": "payload.a"}, TOPIC, b"[1, 2]", "invalid_json"),
        ({"x": "payload.a"}, TOPIC, b'{"a":' * 5000 + b"1" + b"}" * 5000, "invalid_json"),  # too deep
        ({"x": "payload.a"}, TOPIC, b'{"b": 1}', "missing_field"),
        ({"x": "payload.a.b"}, TOPIC, b'{"a": {"c": 1}}', "missing_field"),
        ({"x": "payload.a.3"}, TOPIC, b'{"a": [1, 2]}', "missing_field"),
        ({"x": "payload.a"}, TOPIC, b'{"a": null}', "wrong_type"),
        ({"x": "payload.a.b"}, TOPIC, b'{"a": 5}', "wrong_type"),
        ({"x": "payload.a.b"}, TOPIC, b'{"a": null}', "wrong_type"),
        ({"x": "payload.a.b"}, TOPIC, b'{"a": [1]}', "wrong_type"),
        ({"x": "topic[5]"}, "sensors/a/b/c", b"{}", "bad_topic_level"),
        ({"x": "topic[-5]"}, "sensors/a/b/c", b"{}", "bad_topic_level"),
    ],
)
def test_each_unusable_message_has_its_error_code(
    variables: dict[str, str], topic: str, payload: bytes, code: str
) -> None:
    r = rule(topic_filter="sensors/#", variables=variables, max_payload_bytes=65536)
    with pytest.raises(MessageError) as caught:
        extract_variables(r, topic, payload)
    assert caught.value.code == code
    assert str(caught.value)


def test_output_topic_fills_the_pattern() -> None:
    r = rule(output_topic="answers/{level1}/{rule}/{node}/{source_id}")
    assert output_topic(r, "n1", TOPIC, "17") == "answers/m1/vibration/n1/17"
    assert output_topic(r, "n1", TOPIC, "sha256:ab12") == "answers/m1/vibration/n1/sha256:ab12"


def test_output_topic_without_a_pattern_uses_the_fallback() -> None:
    assert output_topic(rule(), "n1", TOPIC, "17", fallback="edgefleet/s/results/n1") == "edgefleet/s/results/n1"
    with pytest.raises(ValueError, match="fallback"):
        output_topic(rule(), "n1", TOPIC, "17")


@pytest.mark.parametrize("source_id", ["a/b", "a+b", "#", "$x", "", "a\0b", "tab\there", "x" * 129])
def test_source_ids_that_would_change_the_topic_are_hashed(source_id: str) -> None:
    topic = output_topic(rule(output_topic="answers/{source_id}"), "n1", TOPIC, source_id)
    level = topic.removeprefix("answers/")
    assert level == "h-" + hashlib.sha256(source_id.encode()).hexdigest()[:32]
    check_topic_filter(topic)  # a valid filter without wildcards is a valid topic
    assert "+" not in topic and "#" not in topic


def test_distinct_unsafe_ids_get_distinct_topics_and_safe_ones_stay_readable() -> None:
    assert topic_safe("a/b") != topic_safe("a_b") != topic_safe("a+b")
    assert topic_safe("sensor 7 ü") == "sensor 7 ü"


def test_output_level_beyond_a_hash_filter_is_a_message_error() -> None:
    r = rule(topic_filter="sensors/#", output_topic="answers/{level3}")
    assert output_topic(r, "n1", "sensors/a/b/c", "1") == "answers/c"
    with pytest.raises(MessageError) as caught:
        output_topic(r, "n1", "sensors/a", "1")
    assert caught.value.code == "bad_topic_level"


def test_topic_levels_used_as_variables_are_bounded() -> None:
    r = rule(variables={"where": "topic[1]"})
    with pytest.raises(MessageError) as e:
        extract_variables(r, f"sensors/{'x' * 5000}/vibration", b"{}")
    assert e.value.code == "bad_topic_level" and "at most 256" in e.value.message
    with pytest.raises(MessageError) as e:
        extract_variables(r, "sensors/a\x01b/vibration", b"{}")
    assert e.value.code == "bad_topic_level"
    assert extract_variables(r, "sensors/pump-7/vibration", b"{}") == {"where": "pump-7"}


def test_deeply_nested_json_payload_is_an_invalid_json_error() -> None:
    r = rule(variables={"v": "payload.v"})
    deep = b'{"v": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    with pytest.raises(MessageError) as e:
        extract_variables(r, TOPIC, deep)
    assert e.value.code == "invalid_json" and "levels deep" in e.value.message
    assert message_id(TOPIC, deep, []).startswith("sha256:")
