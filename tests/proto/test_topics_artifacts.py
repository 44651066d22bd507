"""Artifact topics are built and parsed by the topic module only."""

from __future__ import annotations

import pytest

from edgefleet.proto.topics import ChunkTopic, Topics

T = Topics.for_site("lab")


def test_chunk_topics_parse_back_to_what_built_them() -> None:
    topic = T.artifact_chunk("adapter", "alarm", "1.2", 17)
    assert topic == "edgefleet/lab/artifact/adapter/alarm/1.2/chunk/17"
    assert T.chunk_of(topic) == ChunkTopic("adapter", "alarm", "1.2", 17)


@pytest.mark.parametrize("version", ["1.0+cu121", "1.2+b", "2+3+4", "1.0-rc.1_x"])
def test_a_version_with_a_plus_is_a_publishable_level_and_parses_back(version: str) -> None:
    """`+` is allowed in versions but is a wildcard in MQTT: it is percent-encoded in the topic (issue 22)."""
    import paho.mqtt.client as mqtt

    topic = T.artifact_chunk("adapter", "alarm", version, 3)
    level = topic.split("/")[-3]
    assert "+" not in level and "#" not in level and "/" not in level
    assert level == version.replace("+", "%2B")
    assert T.chunk_of(topic) == ChunkTopic("adapter", "alarm", version, 3)
    flt = T.artifact_chunks("adapter", "alarm", version)
    assert mqtt.topic_matches_sub(flt, topic)
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk("adapter", "alarm", version + "0", 3))


def test_a_percent_sign_is_encoded_too_so_decoding_is_exact() -> None:
    topic = T.artifact_chunk("adapter", "alarm", "1%2B", 0)  # not a valid version, but must not decode to `1+`
    assert T.chunk_of(topic) == ChunkTopic("adapter", "alarm", "1%2B", 0)


def test_a_whole_level_wildcard_stays_a_wildcard_in_filters() -> None:
    import paho.mqtt.client as mqtt

    flt = T.artifact_chunks("+", "+", "+")
    assert flt == "edgefleet/lab/artifact/+/+/+/chunk/+"
    assert mqtt.topic_matches_sub(flt, T.artifact_chunk("adapter", "alarm", "1.0+cu121", 0))


def test_the_chunk_filter_matches_every_chunk_of_one_version_only() -> None:
    import paho.mqtt.client as mqtt  # the broker's matching rules, as paho implements them

    flt = T.artifact_chunks("knowledge", "manuals", "3")
    assert flt == "edgefleet/lab/artifact/knowledge/manuals/3/chunk/+"
    assert mqtt.topic_matches_sub(flt, T.artifact_chunk("knowledge", "manuals", "3", 0))
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk("knowledge", "manuals", "4", 0))
    assert not mqtt.topic_matches_sub(flt, T.artifact_manifest("knowledge", "manuals"))


def test_manifest_topics_parse_back_and_the_filter_matches_one_kind() -> None:
    topic = T.artifact_manifest("knowledge", "manuals")
    assert T.manifest_of(topic) == ("knowledge", "manuals")
    flt = T.all_artifact_manifests("adapter")
    import paho.mqtt.client as mqtt

    assert mqtt.topic_matches_sub(flt, T.artifact_manifest("adapter", "alarm"))
    assert not mqtt.topic_matches_sub(flt, topic)


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/x",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/-1",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/\u00b2",  # a digit to str.isdigit, not to int()
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/1234567890",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/",
        "edgefleet/lab/artifact/adapter/alarm/1/piece/3",
        "edgefleet/lab/artifact/adapter/alarm/chunk/3",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/3/extra",
        "edgefleet/other/artifact/adapter/alarm/1/chunk/3",
        "edgefleet/lab/results/adapter/alarm/1/chunk/3",
    ],
)
def test_what_is_not_a_chunk_topic(topic: str) -> None:
    assert T.chunk_of(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/lab/artifact/adapter/alarm",
        "edgefleet/lab/artifact/adapter/alarm/manifest/x",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/0",
        "edgefleet/lab/desired/adapter/alarm/manifest",
        "edgefleet/other/artifact/adapter/alarm/manifest",
    ],
)
def test_what_is_not_a_manifest_topic(topic: str) -> None:
    assert T.manifest_of(topic) is None
