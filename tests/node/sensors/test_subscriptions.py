"""Which filters the sensor session subscribes to: a message matching overlapping rules comes in once."""

from __future__ import annotations

import pytest

from edgefleet.node.sensors.subscriptions import covers, subscription_filters
from edgefleet.proto.rules import RuleSpec, topic_matches


def rule(name: str, topic_filter: str) -> RuleSpec:
    return RuleSpec(name=name, version="1", topic_filter=topic_filter, template="t")


@pytest.mark.parametrize(
    ("wide", "narrow", "expected"),
    [
        ("sensors/#", "sensors/+/temp", True),
        ("sensors/#", "sensors", True),  # `a/#` matches `a` itself
        ("sensors/+/temp", "sensors/#", False),
        ("sensors/+/temp", "sensors/s1/temp", True),
        ("sensors/s1/temp", "sensors/+/temp", False),
        ("a/+/c", "a/b/+", False),  # they overlap (a/b/c), neither covers the other
        ("a/+", "a/#", False),
        ("a/b", "a/b/#", False),
        ("#", "$SYS/broker", False),  # a leading wildcard never matches `$` topics
        ("+/x", "a/x", True),
    ],
)
def test_covers_follows_mqtt_matching(wide: str, narrow: str, expected: bool) -> None:
    assert covers(wide, narrow) is expected


@pytest.mark.parametrize(
    ("wide", "narrow"),
    [("sensors/#", "sensors/+/temp"), ("a/+/c", "a/b/+"), ("+/+", "a/b"), ("a/#", "a/b/c/#")],
)
def test_covers_agrees_with_matching_on_sample_topics(wide: str, narrow: str) -> None:
    topics = ["a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "sensors", "sensors/s1/temp", "sensors/s1/hum", "x/y"]
    if covers(wide, narrow):
        assert all(topic_matches(wide, t) for t in topics if topic_matches(narrow, t))


def test_a_filter_another_rule_covers_is_not_subscribed() -> None:
    rules = {"all": (rule("all", "sensors/#"), None), "temp": (rule("temp", "sensors/+/temp"), None)}
    assert subscription_filters(rules) == {"sensors/#"}


def test_partly_overlapping_and_separate_filters_are_all_subscribed() -> None:
    rules = {
        "a": (rule("a", "a/+/c"), None),
        "b": (rule("b", "a/b/+"), None),
        "c": (rule("c", "other/#"), None),
        "d": (rule("d", "other/#"), None),  # the same filter twice: one subscription
    }
    assert subscription_filters(rules) == {"a/+/c", "a/b/+", "other/#"}


def test_only_filters_of_the_same_kind_cover_each_other() -> None:
    # A node's own subscription and a group's shared one deliver differently: both are kept.
    rules = {
        "own": (rule("own", "sensors/#"), None),
        "shared": (rule("shared", "sensors/+/temp"), "vib"),
        "shared-all": (rule("shared-all", "plant/#"), "vib"),
        "shared-oven": (rule("shared-oven", "plant/oven/+"), "vib"),
        "other-group": (rule("other-group", "plant/oven/+"), "heat"),
    }
    assert subscription_filters(rules) == {
        "sensors/#",
        "$share/vib/sensors/+/temp",
        "$share/vib/plant/#",
        "$share/heat/plant/oven/+",
    }
