"""MqttLink runs each handler once per message, however many of its filters match (real Mosquitto).

Mosquitto sends a client one copy of a message per matching subscription; each copy is its own
delivery (its own packet id, acknowledged once). A handler subscribed under two overlapping filters
used to run twice for each copy, and with manual acknowledgement ack each packet twice.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edgefleet.plumbing.mqtt_link import MqttLink
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto


def test_a_handler_behind_overlapping_filters_runs_once_per_delivery(broker: Mosquitto) -> None:
    calls: list[tuple[str, int]] = []
    other: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handler(msg: mqtt.MQTTMessage) -> None:
        with lock:
            calls.append((msg.topic, msg.mid))

    def another(msg: mqtt.MQTTMessage) -> None:
        with lock:
            other.append((msg.topic, msg.mid))

    link = MqttLink(broker.url, **broker.link_options())
    link.subscribe("d/+/c", handler)
    link.subscribe("d/b/+", handler)  # overlaps d/+/c on d/b/c; neither covers the other
    link.subscribe("d/#", another)  # a different handler: it runs too, once per delivery
    link.start()
    try:
        assert link.wait_subscribed(10)
        assert link.publish_wait("d/b/c", b"both")
        assert link.publish_wait("d/x/c", b"marker")  # after it: handled once every copy of d/b/c was
        assert wait_for(lambda: any(t == "d/x/c" for t, _ in calls + other), timeout=5)
        assert wait_for(lambda: {t for t, _ in calls} == {t for t, _ in other} == {"d/b/c", "d/x/c"}, timeout=5)
        with lock:
            # Each delivery (packet id) once per handler, whichever of the handler's filters matched it.
            assert len(calls) == len(set(calls)), calls
            assert len(other) == len(set(other)), other
    finally:
        link.stop()
