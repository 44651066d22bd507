"""Property-based: arbitrary MQTT 5 properties and payloads at every topic a node and the orchestrator
subscribe to, over a real broker, against a real node and a real orchestrator.

Whatever arrives: no thread dies (both processes alive, no traceback in their logs), the node's
health tells the truth (SERVING, and it still generates), the orchestrator still answers commands,
and what is refused is refused with a typed error report (its code is an ErrorCode). The number
of cases is `max_examples` below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import Command
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env
from tests.orchestrator.command_client import CommandClient

NODE, GROUP = "prop1", "x86-dev"
T = Topics.for_site("lab")
TOPICS = [
    T.desired_node(NODE),
    T.desired_group(GROUP),
    T.node_requests(NODE),
    T.group_requests(GROUP),
    T.artifact_manifest("adapter", "a1"),
    T.artifact_manifest("knowledge", "k1"),
    T.artifact_chunk("adapter", "a1", "1", 0),
    T.artifact_chunk_requests(),
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Orchestrator, NodeProcess]]:
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
    """A plain MQTT 5 client; a new connection whenever the broker dropped the last one."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker, self.port = broker, broker.port
        self.client: mqtt.Client | None = None

    def connected(self) -> mqtt.Client:
        if self.client is not None and self.client.is_connected():
            return self.client
        self.close()
        client = self.broker.client()
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        assert wait_for(client.is_connected, timeout=5)
        self.client = client
        return client

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


@pytest.fixture(scope="module")
def publisher(site: tuple[Mosquitto, Orchestrator, NodeProcess]) -> Iterator[Publisher]:
    p = Publisher(site[0])
    yield p
    p.close()


@pytest.fixture(scope="module")
def reports(site: tuple[Mosquitto, Orchestrator, NodeProcess]) -> Iterator[Watcher]:
    w = Watcher(site[0], T.all_errors())
    yield w
    w.close()


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(topic=st.sampled_from(TOPICS), payload=payloads, props=properties(), qos=st.sampled_from([0, 1]))
def test_any_message_at_any_subscribed_topic(
    publisher: Publisher, reports: Watcher, topic: str, payload: bytes, props: Properties | None, qos: int
) -> None:
    client = publisher.connected()  # the broker drops a client for some protocol errors (its own guard)
    try:
        info = client.publish(topic, payload, qos=qos, properties=props)
        info.wait_for_publish(1)
    except (ValueError, TypeError):  # paho itself refuses some property values before they leave
        assume(False)
    except RuntimeError:  # the broker closed the connection on this message: it never reached a part
        assume(False)


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


def test_after_every_message_both_processes_are_whole(
    site: tuple[Mosquitto, Orchestrator, NodeProcess], reports: Watcher, tmp_path: Path
) -> None:
    """Runs after the property (file order)."""
    broker, orch, node = site
    assert node.proc.poll() is None and orch.proc is not None and orch.proc.poll() is None
    health = health_pb2_grpc.HealthStub(node.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=3), timeout=30))
    assert last.usage.completion_tokens == 3
    client = CommandClient(broker)
    try:
        result = client.call(Command(op="status").dumps(), timeout=15)
        assert result.ok and any(n["node_id"] == NODE for n in result.data["nodes"])
    finally:
        client.close()
    assert wait_for(lambda: len(_reports(reports)) > 0, timeout=5), "hostile messages are reported"
    codes = {r["code"] for r in _reports(reports)}
    assert codes <= {c.value for c in ErrorCode}, f"untyped codes: {codes - {c.value for c in ErrorCode}}"
    for name, text in (("node", node.log()), ("orchestrator", orch.log_path.read_text(errors="replace"))):
        assert "Traceback" not in text, f"{name}: " + text[text.find("Traceback") - 300 : text.find("Traceback") + 3000]
