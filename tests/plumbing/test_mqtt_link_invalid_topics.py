"""MqttLink refuses topics and filters the broker would refuse, with its own error (issue 22, real Mosquitto).

A chunk topic with a `+` from a version in it made paho raise outside any handling (the chunk
sender's thread died), and an invalid filter kept in the resubscribe set spoiled every reconnect.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from edgefleet.plumbing.mqtt_link import InvalidTopic, MqttLink
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto


@pytest.mark.parametrize("topic", ["a/1.0+cu121/chunk/0", "a/#", "a/+/b"])
def test_publishing_to_a_topic_with_a_wildcard_raises_invalid_topic(broker: Mosquitto, topic: str) -> None:
    link = MqttLink(broker.url, **broker.link_options())
    link.start()
    try:
        assert link.wait_connected(10)
        with pytest.raises(InvalidTopic, match="cannot publish to"):
            link.publish(topic, b"x")
        with pytest.raises(InvalidTopic):
            link.publish_wait(topic, b"x")
        assert link.publish_wait("a/ok", b"x")  # the link still works
    finally:
        link.stop()


@pytest.mark.parametrize("topic_filter", ["a/1.0+cu121/chunk/+", "a/#/b", "a/b#", "", "$share/g/a/x+"])
def test_an_invalid_filter_is_refused_and_never_resubscribed(broker: Mosquitto, topic_filter: str) -> None:
    got: list[str] = []
    lock = threading.Lock()

    def handler(msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(msg.topic)

    link = MqttLink(broker.url, **broker.link_options())
    with pytest.raises(ValueError, match="is invalid"):
        link.subscribe(topic_filter, handler)
    link.subscribe("a/+/ok", handler)
    link.start()
    try:
        assert link.wait_subscribed(10)  # one SUBACK for the valid filter: nothing invalid was sent with it
        with pytest.raises(ValueError, match="is invalid"):
            link.subscribe_wait(topic_filter, handler)
        assert link.publish_wait("a/b/ok", b"x")
        assert wait_for(lambda: got == ["a/b/ok"], timeout=5)
        assert topic_filter not in link._subs
    finally:
        link.stop()
