"""MQTT 5 request/response over a real Mosquitto: correlation, refusals, undeliverable answers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import (
    MAX_CORRELATION_BYTES,
    BadResponseTarget,
    NoAnswer,
    ResponseTarget,
    RpcClient,
    check_response_topic,
    reply,
    request,
    response_target,
)
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Mosquitto

REQUESTS = "lab/echo/requests"


class Echo:
    """A responder built on the helper: answers `<payload>!` at once, or, for a payload starting with
    `hold:`, when the test releases it (so answers come late, or out of order, by the test's choice)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.link = MqttLink(broker.url, **broker.link_options(), client_id=f"echo-{uuid.uuid4().hex[:6]}")
        self.refused: list[str] = []
        self.sent: list[bytes] = []  # the answers that went out
        self.failed: list[bytes] = []  # the answers reply() could not send
        self._held: dict[bytes, ResponseTarget] = {}
        self._lock = threading.Lock()
        self.link.subscribe(REQUESTS, self._on_request)
        self.link.start()
        assert self.link.wait_subscribed(10)

    def _on_request(self, msg: mqtt.MQTTMessage) -> None:
        try:
            target = response_target(msg)
        except BadResponseTarget as e:
            self.refused.append(str(e))
            return
        payload = bytes(msg.payload)
        if payload.startswith(b"hold:"):
            with self._lock:
                self._held[payload] = target
        else:
            self._answer(target, payload)

    def _answer(self, target: ResponseTarget, payload: bytes) -> None:
        (self.sent if reply(self.link, target, payload + b"!") else self.failed).append(payload + b"!")

    def holding(self) -> set[bytes]:
        with self._lock:
            return set(self._held)

    def release(self, payload: bytes) -> None:
        """Send the held answer to `payload` now (from the test's thread)."""
        with self._lock:
            target = self._held.pop(payload)
        self._answer(target, payload)

    def close(self) -> None:
        self.link.stop()


@pytest.fixture
def echo(broker: Mosquitto) -> Iterator[Echo]:
    e = Echo(broker)
    yield e
    e.close()


@pytest.fixture
def client_link(broker: Mosquitto) -> Iterator[MqttLink]:
    link = MqttLink(broker.url, **broker.link_options(), client_id=f"req-{uuid.uuid4().hex[:6]}")
    link.start()
    assert link.wait_connected(10)
    yield link
    link.stop()


def _raw_request(broker: Mosquitto, response_topic: str, correlation: bytes = b"c") -> None:
    """A requester that does not use the helper (and so can send a bad response topic)."""
    c = broker.client()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        c.publish(REQUESTS, b"hi", qos=1, properties=props).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_request_gets_its_answer(echo: Echo, client_link: MqttLink) -> None:
    answer = request(client_link, REQUESTS, b"ping", 10, response_topic=f"lab/cli/{client_link.client_id}/responses")
    assert answer == b"ping!"
    assert wait_for(lambda: echo.sent == [b"ping!"]) and echo.failed == []


def test_concurrent_requests_get_their_own_answers_out_of_order(echo: Echo, client_link: MqttLink) -> None:
    rpc = RpcClient(client_link, f"lab/cli/{client_link.client_id}/responses")
    assert rpc.subscribe(10)
    answers: dict[int, bytes] = {}

    def ask(i: int) -> None:
        answers[i] = rpc.call(REQUESTS, f"hold:{i}".encode(), 30)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(echo.holding()) == 5, timeout=10), echo.holding()
    for i in reversed(range(5)):  # the last question is answered first
        echo.release(f"hold:{i}".encode())
        assert wait_for(lambda i=i: i in answers, timeout=10), (i, answers)
    for t in threads:
        t.join(15)
    assert answers == {i: f"hold:{i}!".encode() for i in range(5)}


def test_no_responder_means_no_answer_in_time(broker: Mosquitto, client_link: MqttLink) -> None:
    rpc = RpcClient(client_link, f"lab/cli/{client_link.client_id}/responses")
    started = time.monotonic()
    with pytest.raises(NoAnswer, match="no answer on lab/nobody/requests"):
        rpc.call("lab/nobody/requests", b"x", 0.5)
    assert 0.4 < time.monotonic() - started < 5


def test_a_late_answer_is_not_taken_for_the_next_request(echo: Echo, client_link: MqttLink) -> None:
    rpc = RpcClient(client_link, f"lab/cli/{client_link.client_id}/responses")
    with pytest.raises(NoAnswer):
        rpc.call(REQUESTS, b"hold:slow", 0.3)
    assert wait_for(lambda: echo.holding() == {b"hold:slow"}, timeout=10)
    assert rpc.call(REQUESTS, b"fast", 10) == b"fast!"
    echo.release(b"hold:slow")  # the slow answer goes out now, for a correlation id nobody waits for
    # the next answer leaves the same link on the same topic after it, so it arrives after it too
    assert rpc.call(REQUESTS, b"again", 10) == b"again!"
    assert wait_for(lambda: echo.sent == [b"fast!", b"hold:slow!", b"again!"]), echo.sent


@pytest.mark.parametrize(
    ("response_topic", "reason"),
    [
        ("lab/+/responses", "wildcard"),
        ("lab/#", "wildcard"),
        ("lab//responses", "empty level"),
        ("lab/responses/", "empty level"),
        ("$SYS/x", "broker"),
        ("lab/" + "x" * 300, "304 characters"),
    ],
)
def test_a_request_with_an_unusable_response_topic_is_refused_without_exception(
    broker: Mosquitto, echo: Echo, response_topic: str, reason: str
) -> None:
    _raw_request(broker, response_topic)
    assert wait_for(lambda: bool(echo.refused), timeout=5)
    assert len(echo.refused) == 1 and reason in echo.refused[0], echo.refused
    assert echo.sent == []
    assert echo.link.connected.is_set()  # the responder's link carries on


def test_oversized_correlation_data_is_refused(broker: Mosquitto, echo: Echo) -> None:
    _raw_request(broker, "lab/cli/x/responses", b"c" * (MAX_CORRELATION_BYTES + 1))
    assert wait_for(lambda: bool(echo.refused), timeout=5)
    assert echo.refused and "correlation data is 129 bytes" in echo.refused[0]


def test_response_topic_checks() -> None:
    assert check_response_topic("edgefleet/lab/cli/abc/responses") == "edgefleet/lab/cli/abc/responses"
    assert check_response_topic(b"a/b") == "a/b"
    for bad, reason in [
        (b"a/\xff", "not UTF-8"),
        ("a/\ud800", "not UTF-8"),
        ("", "no response topic"),
        (None, "no response topic"),
        ("a/b\x00", "control"),
        ("/a", "empty level"),
        ("a" * 257, "257 characters"),
    ]:
        with pytest.raises(BadResponseTarget, match=reason):
            check_response_topic(bad)
    assert len(check_response_topic("a" * 256)) == 256


def test_reply_on_a_link_that_is_down_returns_false(broker: Mosquitto) -> None:
    link = MqttLink(broker.url, **broker.link_options(), client_id=f"down-{uuid.uuid4().hex[:6]}")
    link.start()
    assert link.wait_connected(10)
    link.stop()
    assert reply(link, ResponseTarget("lab/cli/x/responses", b"c"), b"late") is False


def test_a_client_needs_a_usable_response_topic(client_link: MqttLink) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        RpcClient(client_link, "lab/+/responses")


def test_a_request_on_a_link_that_never_connected_fails_fast() -> None:
    link = MqttLink(f"mqtt://127.0.0.1:{free_port()}", client_id="nobody")
    with pytest.raises(NoAnswer, match="not connected"):
        RpcClient(link, "lab/cli/nobody/responses").call(REQUESTS, b"x", 0.2)
