"""Artifact topics are built and parsed by the topic module only, under the target they were pushed to."""

from __future__ import annotations

import paho.mqtt.client as mqtt  # the broker's matching rules, as paho implements them
import pytest

from edgefleet.proto.topics import ChunkTopic, ManifestTopic, Topics

T = Topics.for_site("lab")
LINE = T.artifact_scope("group", "line")


def test_chunk_topics_parse_back_to_what_built_them() -> None:
    topic = T.artifact_chunk(LINE, "adapter", "alarm", "1.2", 17)
    assert topic == "edgefleet/lab/artifact/group/line/adapter/alarm/1.2/chunk/17"
    assert T.chunk_of(topic) == ChunkTopic("group/line", "adapter", "alarm", "1.2", 17)
    own = T.artifact_chunk(T.artifact_scope("node", "n1"), "adapter", "alarm", "1.2", 0)
    assert T.chunk_of(own) == ChunkTopic("node/n1", "adapter", "alarm", "1.2", 0)


def test_a_scope_is_a_group_or_a_node_and_parses_back() -> None:
    assert T.artifact_scope("group", "line") == "group/line"
    assert T.artifact_target("group/line") == ("group", "line")
    assert T.artifact_target("node/n1") == ("node", "n1")
    with pytest.raises(ValueError, match="group or node"):
        T.artifact_scope("site", "lab")
    for bad in ("line", "site/lab", "group/", "group/a/b", "group/..", "node/+", "group/#"):
        assert T.artifact_target(bad) is None, bad


@pytest.mark.parametrize("version", ["1.0+cu121", "1.2+b", "2+3+4", "1.0-rc.1_x"])
def test_a_version_with_a_plus_is_a_publishable_level_and_parses_back(version: str) -> None:
    """`+` is allowed in versions but is a wildcard in MQTT: it is percent-encoded in the topic (issue 22)."""
    topic = T.artifact_chunk(LINE, "adapter", "alarm", version, 3)
    level = topic.split("/")[-3]
    assert "+" not in level and "#" not in level and "/" not in level
    assert level == version.replace("+", "%2B")
    assert T.chunk_of(topic) == ChunkTopic(LINE, "adapter", "alarm", version, 3)
    flt = T.artifact_chunks(LINE, "adapter", "alarm", version)
    assert mqtt.topic_matches_sub(flt, topic)
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk(LINE, "adapter", "alarm", version + "0", 3))


def test_a_percent_sign_is_encoded_too_so_decoding_is_exact() -> None:
    topic = T.artifact_chunk(LINE, "adapter", "alarm", "1%2B", 0)  # not a valid version, but must not decode to `1+`
    assert T.chunk_of(topic) == ChunkTopic(LINE, "adapter", "alarm", "1%2B", 0)


def test_a_whole_level_wildcard_stays_a_wildcard_in_filters() -> None:
    flt = T.artifact_chunks(LINE, "+", "+", "+")
    assert flt == "edgefleet/lab/artifact/group/line/+/+/+/chunk/+"
    assert mqtt.topic_matches_sub(flt, T.artifact_chunk(LINE, "adapter", "alarm", "1.0+cu121", 0))


def test_the_chunk_filter_matches_every_chunk_of_one_version_of_one_scope_only() -> None:
    flt = T.artifact_chunks(LINE, "knowledge", "manuals", "3")
    assert flt == "edgefleet/lab/artifact/group/line/knowledge/manuals/3/chunk/+"
    assert mqtt.topic_matches_sub(flt, T.artifact_chunk(LINE, "knowledge", "manuals", "3", 0))
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk(LINE, "knowledge", "manuals", "4", 0))
    assert not mqtt.topic_matches_sub(flt, T.artifact_manifest(LINE, "knowledge", "manuals"))
    other = T.artifact_scope("group", "press")
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk(other, "knowledge", "manuals", "3", 0))


def test_manifest_topics_parse_back_and_the_filter_matches_one_kind_of_one_scope() -> None:
    topic = T.artifact_manifest(LINE, "knowledge", "manuals")
    assert topic == "edgefleet/lab/artifact/group/line/knowledge/manuals/manifest"
    assert T.manifest_of(topic) == ManifestTopic("group/line", "knowledge", "manuals")
    flt = T.all_artifact_manifests(LINE, "adapter")
    assert mqtt.topic_matches_sub(flt, T.artifact_manifest(LINE, "adapter", "alarm"))
    assert not mqtt.topic_matches_sub(flt, topic)
    assert not mqtt.topic_matches_sub(flt, T.artifact_manifest(T.artifact_scope("group", "press"), "adapter", "alarm"))
    assert not mqtt.topic_matches_sub(flt, T.artifact_manifest(T.artifact_scope("node", "line"), "adapter", "alarm"))


def test_what_a_target_may_read_is_its_scope_only() -> None:
    """`artifacts_for` is the broker ACL's filter for one target: its manifests and chunks, no other's."""
    flt = T.artifacts_for(LINE)
    assert flt == "edgefleet/lab/artifact/group/line/#"
    assert mqtt.topic_matches_sub(flt, T.artifact_manifest(LINE, "adapter", "alarm"))
    assert mqtt.topic_matches_sub(flt, T.artifact_chunk(LINE, "adapter", "alarm", "1+x", 0))
    for other in (T.artifact_scope("group", "line2"), T.artifact_scope("node", "line"), T.artifact_scope("group", "l")):
        assert not mqtt.topic_matches_sub(flt, T.artifact_manifest(other, "adapter", "alarm"))
        assert not mqtt.topic_matches_sub(flt, T.artifact_chunk(other, "adapter", "alarm", "1", 0))
    assert not mqtt.topic_matches_sub(flt, T.artifact_chunk_requests("line"))


def test_each_node_asks_for_chunks_on_its_own_topic() -> None:
    """Issue 22: one shared request topic let a node ask in another node's name. Each node now has
    its own (the broker lets only that node write it) and the node id is read back from the topic."""
    mine = T.artifact_chunk_requests("n1")
    assert mine == "edgefleet/lab/artifact/requests/n1"
    assert T.chunk_requester_of(mine) == "n1"
    flt = T.all_artifact_chunk_requests()
    assert flt == "edgefleet/lab/artifact/requests/+"
    assert mqtt.topic_matches_sub(flt, mine) and mqtt.topic_matches_sub(flt, T.artifact_chunk_requests("n2"))
    assert not mqtt.topic_matches_sub(mine, T.artifact_chunk_requests("n2"))
    for scope in (LINE, T.artifact_scope("node", "n1")):  # no target's scope reads another node's requests
        assert not mqtt.topic_matches_sub(T.artifacts_for(scope), mine)


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/lab/artifact/requests",  # the shared topic before each node had its own
        "edgefleet/lab/artifact/requests/",
        "edgefleet/lab/artifact/requests/+",
        "edgefleet/lab/artifact/requests/..",
        "edgefleet/lab/artifact/requests/n1/extra",
        "edgefleet/lab/artifact/asks/n1",
        "edgefleet/other/artifact/requests/n1",
    ],
)
def test_a_topic_that_is_no_node_s_request_topic_names_no_requester(topic: str) -> None:
    assert T.chunk_requester_of(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/x",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/-1",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/\u00b2",  # a digit to str.isdigit, not to int()
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/1234567890",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/piece/3",
        "edgefleet/lab/artifact/group/line/adapter/alarm/chunk/3",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/3/extra",
        "edgefleet/lab/artifact/adapter/alarm/1/chunk/3",  # no scope (the layout before scopes)
        "edgefleet/lab/artifact/site/line/adapter/alarm/1/chunk/3",  # not a group or a node
        "edgefleet/lab/artifact/group/../adapter/alarm/1/chunk/3",
        "edgefleet/lab/artifact/group/a%2Bb/adapter/alarm/1/chunk/3",  # a target name no one may have
        "edgefleet/other/artifact/group/line/adapter/alarm/1/chunk/3",
        "edgefleet/lab/results/group/line/adapter/alarm/1/chunk/3",
    ],
)
def test_what_is_not_a_chunk_topic(topic: str) -> None:
    assert T.chunk_of(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/lab/artifact/group/line/adapter/alarm",
        "edgefleet/lab/artifact/group/line/adapter/alarm/manifest/x",
        "edgefleet/lab/artifact/group/line/adapter/alarm/1/chunk/0",
        "edgefleet/lab/artifact/adapter/alarm/manifest",  # no scope (the layout before scopes)
        "edgefleet/lab/artifact/x/line/adapter/alarm/manifest",
        "edgefleet/lab/artifact/node//adapter/alarm/manifest",
        "edgefleet/lab/desired/group/line/adapter/alarm/manifest",
        "edgefleet/other/artifact/group/line/adapter/alarm/manifest",
    ],
)
def test_what_is_not_a_manifest_topic(topic: str) -> None:
    assert T.manifest_of(topic) is None
