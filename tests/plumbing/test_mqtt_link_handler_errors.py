"""MqttLink hands every handler exception to its owner's `on_handler_error`, with a way to retry (real Mosquitto)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from edgefleet.plumbing.mqtt_link import Again, MqttLink
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto


def test_a_raising_handler_reaches_the_hook_and_can_be_run_again(broker: Mosquitto) -> None:
    seen: list[bytes] = []
    failures: list[tuple[str, BaseException, Again]] = []
    calls = 0
    lock = threading.Lock()

    def handler(msg: mqtt.MQTTMessage) -> None:
        nonlocal calls
        with lock:
            calls += 1
            if calls == 1:
                raise OSError(28, "No space left on device")
            seen.append(bytes(msg.payload))

    link = MqttLink(
        broker.url, **broker.link_options(), on_handler_error=lambda m, e, again: failures.append((m.topic, e, again))
    )
    link.subscribe("t/errors", handler)
    link.start()
    try:
        assert link.wait_subscribed(10)
        assert link.publish_wait("t/errors", b"one")
        assert wait_for(lambda: len(failures) == 1, timeout=5)
        topic, error, again = failures[0]
        assert topic == "t/errors" and isinstance(error, OSError)
        assert again() is True  # the same handler, the same message, outside the network thread
        assert seen == [b"one"]
        # The network thread survived: later messages are handled.
        assert link.publish_wait("t/errors", b"two")
        assert wait_for(lambda: seen == [b"one", b"two"], timeout=5)
    finally:
        link.stop()


def test_a_retry_that_fails_raises_to_the_retrier_not_the_hook(broker: Mosquitto) -> None:
    failures: list[Again] = []

    def handler(msg: mqtt.MQTTMessage) -> None:
        raise RuntimeError("always")

    link = MqttLink(broker.url, **broker.link_options(), on_handler_error=lambda m, e, again: failures.append(again))
    link.subscribe("t/always", handler)
    link.start()
    try:
        assert link.wait_subscribed(10)
        assert link.publish_wait("t/always", b"x")
        assert wait_for(lambda: len(failures) == 1, timeout=5)
        with pytest.raises(RuntimeError, match="always"):
            failures[0]()
        assert len(failures) == 1
    finally:
        link.stop()
