"""Property-based: arbitrary MQTT 5 properties and payloads at every topic a node and the orchestrator
subscribe to, over a real broker, against a real node and a real orchestrator.

Each example carries its own verdict, taken right after its message: no thread died (both processes
alive, no traceback in their logs), the node's health tells the truth (SERVING), the node still
answers a request sent after the message on the same connection (so it has handled the message
first), the orchestrator still answers a command, and every error report so far has a typed code
(an ErrorCode). A case that breaks a process fails itself, whatever order the tests run in. The
number of cases is `max_examples` below.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env
from tests.orchestrator.command_client import CommandClient

NODE, GROUP = "prop1", "x86-dev"
T = Topics.for_site("lab")
PROBE_ANSWERS = T.cli_responses("mqtt-properties-probe")
TOPICS = [
    T.desired_node(NODE),
    T.desired_group(GROUP),
    T.node_requests(NODE),
    T.group_requests(GROUP),
    T.artifact_manifest(T.artifact_scope("group", GROUP), "adapter", "a1"),
    T.artifact_manifest(T.artifact_scope("node", NODE), "knowledge", "k1"),
    T.artifact_chunk(T.artifact_scope("group", GROUP), "adapter", "a1", "1", 0),
    T.artifact_chunk_requests(NODE),  # payloads name NODE or "ghost": its own name or another's
    T.node_status("ghost"),
    T.node_status(NODE),
    T.node_telemetry(NODE),
    T.node_reported(NODE),
    T.errors(NODE),
    T.orchestrator_commands(),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
# Payloads shaped like the contracts, so the checks past JSON parsing are reached too.
shaped = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, 0, "1"]), "node_id": st.sampled_from([NODE, "ghost", "", "x" * 300])},
    optional={
        "op": st.sampled_from(["status", "push-template", "rm-rule", "nope", ""]),
        "generation": st.integers(-(2**70), 2**70),
        "site": st.sampled_from(["lab", "other"]),
        "target": json_values,
        "state": st.sampled_from(["online", "offline", "failed", "bogus"]),
        "prompt": st.text(max_size=50),
        "max_tokens": st.integers(-5, 10**9),
        "chunks": st.lists(st.integers(-3, 10**12), max_size=5),
        "kind": st.sampled_from(["adapter", "knowledge", "x"]),
    },
)
payloads = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | shaped.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
)


@st.composite
def properties(draw: st.DrawFn) -> Properties | None:
    if draw(st.booleans()):
        return None
    props = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        props.ResponseTopic = draw(
            st.sampled_from(["resp/#", "a/+/b", "", "$SYS/x", "ok/reply"]) | st.text(max_size=300)
        )
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        props.UserProperty = draw(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=2000)), max_size=40))
    if draw(st.booleans()):
        props.ContentType = draw(st.text(max_size=30))
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.sampled_from([0, 1]))
    return props


Site = tuple[Mosquitto, Orchestrator, NodeProcess]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("mqtt-props")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    node = NodeProcess(tmp, env=node_env(broker), node_id=NODE)
    try:
        node.wait_serving()
        yield broker, orch, node
    finally:
        node.stop()
        orch.stop()
        broker.stop()


class Publisher:
    """A plain MQTT 5 client that sends each example's message and then the node's probe on the same
    connection; a new connection whenever the broker dropped the last one (its own guard against
    some protocol errors)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker, self.port = broker, broker.port
        self.client: mqtt.Client | None = None
        self._answers: dict[bytes, dict[str, Any]] = {}
        self._cond = threading.Condition()  # notified on an answer, a PUBACK and a dropped connection

    def connected(self) -> mqtt.Client:
        if self.client is not None and self.client.is_connected():
            return self.client
        if self.client is not None:  # dropped: no reconnect; its loop thread ends by itself (not waited
            self.client.disconnect()  # for: it sleeps out paho's reconnect delay first)
            self.client = None
        client = self.broker.client()
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(PROBE_ANSWERS, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.on_publish = lambda *_: self._notify()
        client.on_disconnect = lambda *_: self._notify()
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        assert subscribed.wait(5), "the publisher could not subscribe to its answers"
        self.client = client
        return client

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            with self._cond:
                self._answers[bytes(correlation)] = json.loads(msg.payload)
                self._cond.notify_all()

    def send(self, topic: str, payload: bytes, qos: int, props: Properties | None) -> None:
        """One example's message: back once it left (QoS 0), was acknowledged (QoS 1), or the broker
        dropped the connection over it (then it never reached a part)."""
        client = self.connected()
        try:
            info = client.publish(topic, payload, qos=qos, properties=props)
        except (ValueError, TypeError):  # paho itself refuses some property values before they leave
            return
        with self._cond:
            self._cond.wait_for(lambda: info.is_published() or not client.is_connected(), 5)

    def ask_node(self, timeout: float = 15) -> dict[str, Any]:
        """A request the node refuses (`{}` has neither prompt nor template) and its answer. The broker
        keeps one connection's order and the node takes its messages on one thread, so the answer
        also means the node has handled what this connection sent before. Asked again on a new
        connection when the broker drops this one (over the message before)."""
        for _ in range(3):
            client = self.connected()
            correlation = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = PROBE_ANSWERS
            props.CorrelationData = correlation
            client.publish(T.node_requests(NODE), b"{}", qos=1, properties=props)
            with self._cond:
                done = lambda c=correlation, cl=client: c in self._answers or not cl.is_connected()  # noqa: E731
                self._cond.wait_for(done, timeout)
                if correlation in self._answers:
                    return self._answers.pop(correlation)
            assert not client.is_connected(), f"the node did not answer within {timeout} s"
        raise AssertionError("the broker dropped three connections in a row")

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


@pytest.fixture(scope="module")
def publisher(site: Site) -> Iterator[Publisher]:
    p = Publisher(site[0])
    yield p
    p.close()


@pytest.fixture(scope="module")
def reports(site: Site) -> Iterator[Watcher]:
    w = Watcher(site[0], T.all_errors())
    yield w
    w.close()


@pytest.fixture(scope="module")
def commands(site: Site) -> Iterator[CommandClient]:
    client = CommandClient(site[0])
    yield client
    client.close()


def _reports(watcher: Watcher) -> list[dict[str, object]]:
    """Error reports the parts published (the test's own junk on an errors topic is skipped)."""
    out = []
    for _, raw in list(watcher.messages):
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and doc.get("source") in (NODE, "orchestrator") and "code" in doc:
            out.append(doc)
    return out


def assert_whole(site: Site, publisher: Publisher, commands: CommandClient, reports: Watcher) -> None:
    """The verdict after a message: both processes alive and answering, no thread died, codes typed."""
    _, orch, node = site
    assert node.proc.poll() is None, f"the node exited:\n{node.log()[-3000:]}"
    assert orch.proc is not None and orch.proc.poll() is None, orch.log_path.read_text()[-3000:]
    answer = publisher.ask_node()
    assert answer.get("node_id") == NODE and answer.get("ok") is False, answer
    health = health_pb2_grpc.HealthStub(node.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    result = commands.call(Command(op="status").dumps(), timeout=15)
    assert result.ok and any(n["node_id"] == NODE for n in result.data["nodes"]), result
    codes = {r["code"] for r in _reports(reports)}
    assert codes <= {c.value for c in ErrorCode}, f"untyped codes: {codes - {c.value for c in ErrorCode}}"
    for name, text in (("node", node.log()), ("orchestrator", orch.log_path.read_text(errors="replace"))):
        assert "Traceback" not in text, f"{name}: " + text[text.find("Traceback") - 300 : text.find("Traceback") + 3000]


@pytest.fixture(scope="module")
def known(site: Site, commands: CommandClient) -> Site:
    """The site once the orchestrator lists the node (the verdict asks for it)."""

    def listed() -> bool:
        result = commands.call(Command(op="status").dumps(), timeout=15)
        return result.ok and any(n["node_id"] == NODE for n in result.data["nodes"])

    assert wait_for(listed, timeout=30), "the orchestrator never listed the node"
    return site


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(topic=st.sampled_from(TOPICS), payload=payloads, props=properties(), qos=st.sampled_from([0, 1]))
def test_any_message_at_any_subscribed_topic(
    known: Site,
    publisher: Publisher,
    commands: CommandClient,
    reports: Watcher,
    topic: str,
    payload: bytes,
    props: Properties | None,
    qos: int,
) -> None:
    publisher.send(topic, payload, qos, props)
    assert_whole(known, publisher, commands, reports)


def test_a_refused_message_is_reported_with_a_typed_code_and_the_node_still_generates(
    known: Site, publisher: Publisher, commands: CommandClient, reports: Watcher
) -> None:
    _, _, node = known
    before = len(_reports(reports))
    publisher.connected().publish(T.desired_node(NODE), b"{not json", qos=1).wait_for_publish(5)
    assert wait_for(lambda: len(_reports(reports)) > before, timeout=10), "a refused message is reported"
    assert_whole(known, publisher, commands, reports)
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=3), timeout=30))
    assert last.usage.completion_tokens == 3
