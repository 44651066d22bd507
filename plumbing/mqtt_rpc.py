"""MQTT 5 request/response, done once: the response topic and correlation data of a request.

Responder side (a handler on the network thread)::

    try:
        target = response_target(msg)
    except BadResponseTarget as e:
        log.warning("request refused", extra={"reason": str(e)})   # nothing to answer to
        return
    ...
    reply(link, target, answer_bytes)      # never raises; False when it could not go out

Requester side: an `RpcClient` subscribes once to a response topic of its own (unique per client:
build it from the client id, e.g. `Topics.cli_responses(client_id)`), sends each request with a
fresh correlation id and waits for the answer carrying that id. `request(link, …)` does the same
with one `RpcClient` per link and response topic.

A response topic is whatever a requester wrote, so it is checked before anything is published
there: no wildcards (`+`, `#`), no empty levels (`a//b`, a leading or trailing `/`), not a `$…`
broker topic, no NUL or other control characters, valid UTF-8, at most 256 characters; and
correlation data of at most 128 bytes.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.plumbing.mqtt_link import MqttLink

log = logging.getLogger("edgefleet.mqtt.rpc")

MAX_RESPONSE_TOPIC_CHARS = 256
MAX_CORRELATION_BYTES = 128
MAX_USER_PROPERTIES = 32
MAX_USER_PROPERTY_CHARS = 1024  # key and value together


class BadResponseTarget(ValueError):
    """A request whose response topic or correlation data cannot be answered to; the message says why."""


class BadProperties(ValueError):
    """MQTT 5 user properties a client sent that are too many or too large; the message says why."""


def check_user_properties(msg: mqtt.MQTTMessage) -> list[tuple[str, str]]:
    """The message's user properties, or BadProperties when there are too many or one is too large."""
    props = list(getattr(msg.properties, "UserProperty", None) or [])
    if len(props) > MAX_USER_PROPERTIES:
        raise BadProperties(f"the message has {len(props)} user properties; at most {MAX_USER_PROPERTIES} are taken")
    for key, value in props:
        size = len(str(key)) + len(str(value))
        if size > MAX_USER_PROPERTY_CHARS:
            raise BadProperties(
                f"user property {str(key)[:40]!r} is {size} characters; at most {MAX_USER_PROPERTY_CHARS} are taken"
            )
    return [(str(k), str(v)) for k, v in props]


class NoAnswer(TimeoutError):
    """No reply with the request's correlation id came in time (or the request could not be sent)."""


@dataclass(frozen=True)
class ResponseTarget:
    """Where a request's answer goes: its response topic, and the correlation data to echo."""

    topic: str
    correlation: bytes | None = None


def check_response_topic(topic: object) -> str:
    """The topic as str if a reply may be published to it, else BadResponseTarget saying why."""
    if isinstance(topic, bytes | bytearray):
        try:
            topic = bytes(topic).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadResponseTarget(f"the response topic is not UTF-8 ({e})") from e
    if not isinstance(topic, str) or not topic:
        raise BadResponseTarget("the request has no response topic")
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise BadResponseTarget(f"the response topic is not UTF-8 ({e})") from e
    if len(topic) > MAX_RESPONSE_TOPIC_CHARS:
        raise BadResponseTarget(
            f"the response topic is {len(topic)} characters; at most {MAX_RESPONSE_TOPIC_CHARS} are answered"
        )
    shown = topic[:80]
    if "+" in topic or "#" in topic:
        raise BadResponseTarget(f"the response topic {shown!r} contains a wildcard ('+' or '#')")
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise BadResponseTarget(f"the response topic {shown!r} contains control characters")
    if topic.startswith("$"):
        raise BadResponseTarget(f"the response topic {shown!r} is a broker ('$') topic")
    if "" in topic.split("/"):
        raise BadResponseTarget(f"the response topic {shown!r} has an empty level (leading, trailing or '//')")
    return topic


def check_correlation(data: object) -> bytes | None:
    if data is None:
        return None
    if not isinstance(data, bytes | bytearray):
        raise BadResponseTarget(f"the correlation data is {type(data).__name__}, not bytes")
    if len(data) > MAX_CORRELATION_BYTES:
        raise BadResponseTarget(
            f"the correlation data is {len(data)} bytes; at most {MAX_CORRELATION_BYTES} are answered"
        )
    return bytes(data)


def response_target(msg: mqtt.MQTTMessage) -> ResponseTarget:
    """The validated response topic and correlation data of a request, else BadResponseTarget."""
    props = msg.properties
    return ResponseTarget(
        check_response_topic(getattr(props, "ResponseTopic", None)),
        check_correlation(getattr(props, "CorrelationData", None)),
    )


def reply(link: MqttLink, target: ResponseTarget, payload: bytes, qos: int = 1) -> bool:
    """Publish `payload` to the request's response topic with its correlation data.

    Never raises for an answer that cannot be delivered (link down, topic refused by paho):
    logs it and returns False. The requester owns retries.
    """
    props = Properties(PacketTypes.PUBLISH)
    if target.correlation is not None:
        props.CorrelationData = target.correlation
    try:
        info = link.publish(target.topic, payload, qos=qos, properties=props)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        log.warning("reply not sent", extra={"topic": target.topic[:80], "reason": str(e)})
        return False
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        log.warning("reply not sent", extra={"topic": target.topic, "reason": mqtt.error_string(info.rc)})
        return False
    return True


class RpcClient:
    """Requests from one link, answered on one response topic of its own.

    Thread-safe: several threads may wait for their answers at once. Answers without a pending
    correlation id (late, foreign) are dropped.
    """

    def __init__(self, link: MqttLink, response_topic: str) -> None:
        try:
            self.response_topic = check_response_topic(response_topic)
        except BadResponseTarget as e:
            raise ValueError(str(e)) from e
        self.link = link
        self._cond = threading.Condition()
        self._pending: dict[bytes, bytes | None] = {}
        self._subscribed = False

    def subscribe(self, timeout: float = 5.0) -> bool:
        """Subscribe to the response topic and wait for the SUBACK (False: not connected, or no ack)."""
        if not self._subscribed:
            self._subscribed = self.link.subscribe_wait(self.response_topic, self._on_answer, timeout=timeout)
        return self._subscribed

    def close(self) -> None:
        self.link.unsubscribe(self.response_topic)
        self._subscribed = False

    def _on_answer(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is None:
            return
        key = bytes(correlation)
        with self._cond:
            if key in self._pending:
                self._pending[key] = bytes(msg.payload)
                self._cond.notify_all()

    def call(self, topic: str, payload: bytes, timeout: float) -> bytes:
        """Send one request to `topic` and return the answer's payload; NoAnswer when none came in time."""
        if not self.subscribe(min(timeout, 5.0)):
            raise NoAnswer(f"not connected to the broker (cannot subscribe to {self.response_topic})")
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = correlation
        with self._cond:
            self._pending[correlation] = None
        try:
            self.link.publish(topic, payload, qos=1, properties=props)
            with self._cond:
                if not self._cond.wait_for(lambda: self._pending[correlation] is not None, timeout):
                    raise NoAnswer(f"no answer on {topic} within {timeout:g} s")
                answer = self._pending[correlation]
                assert answer is not None
                return answer
        finally:
            with self._cond:
                self._pending.pop(correlation, None)


_clients: weakref.WeakKeyDictionary[MqttLink, dict[str, RpcClient]] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def request(link: MqttLink, topic: str, payload: bytes, timeout: float, response_topic: str) -> bytes:
    """Send one request on `link` and wait for its answer (see RpcClient.call).

    `response_topic` must be unique to this client (e.g. built from its client id); the link
    keeps one subscription to it for every request.
    """
    with _clients_lock:
        per_link = _clients.setdefault(link, {})
        client = per_link.get(response_topic)
        if client is None:
            client = per_link[response_topic] = RpcClient(link, response_topic)
    return client.call(topic, payload, timeout)
