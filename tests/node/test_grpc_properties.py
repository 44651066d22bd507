"""Property-based: arbitrary field values (and arbitrary bytes) at every gRPC method of a real node.

Whatever arrives, the node answers with a typed status (never UNKNOWN or INTERNAL), and each example
ends with its own verdict on the node: the process alive, health SERVING, every slot back, no
traceback in its log. So a node that crashes fails the case that crashed it, not a later one.
The number of cases is the sum of `max_examples` below (reported by pytest's hypothesis stats).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect, wait_for

# A refusal must be one of these; UNKNOWN and INTERNAL mean the node did not expect the input.
# UNAVAILABLE (busy, draining) counts only while the node is whole: each example checks it after.
TYPED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # the client's own short deadline
    grpc.StatusCode.CANCELLED,  # the client's own cancel after the first chunk
}
SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

text = st.text(max_size=40) | st.text(min_size=1, max_size=3000)
names = st.sampled_from(["", "kb", "nope", "a" * 200, "../x", "kb/..", "é"]) | st.text(max_size=20)
int32 = st.integers(-(2**31), 2**31 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
schemas = (
    st.just("")
    | st.text(max_size=50)
    | json_values.map(json.dumps)
    | st.builds(lambda n: '{"type":"object","properties":{"a":' * n + "{}" + "}}" * n, st.integers(0, 300))
)


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        prompt=draw(text | st.just("")),
        messages=[
            pb.ChatMessage(role=draw(st.sampled_from(["user", "system", "assistant", "robot", ""])), content=c)
            for c in draw(st.lists(text, max_size=3))
        ],
        stop=draw(st.lists(st.text(max_size=80), max_size=20)),
        json_schema=draw(schemas),
        adapter=draw(st.just("") | names),
        template=draw(st.just("") | names),
        variables=draw(st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3)),
    )
    for field, strategy in (
        ("max_tokens", int32),
        ("temperature", floats),
        ("top_p", floats),
        ("top_k", int32),
        ("seed", st.integers(0, 2**32 - 1)),
        ("adapter_scale", floats),
    ):
        if draw(st.booleans()):
            setattr(req, field, draw(strategy))
    if draw(st.booleans()):
        req.retrieval.collection = draw(names)
        req.retrieval.top_k = draw(int32)
    return req


@pytest.fixture(scope="module")
def prop_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("prop-node"))
    try:
        n.wait_serving()
        yield n
    finally:
        n.stop()


def _typed(node: NodeProcess, call: object) -> None:
    """Make the call; a refusal must carry a typed status; then the node must still be whole."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as e:
        assert e.code() in TYPED, f"{e.code().name}: {e.details()[:300]}"
        assert len(e.details()) < 2000, "a refusal quotes what it was sent briefly"
    _whole(node)


def _whole(node: NodeProcess) -> None:
    """This example's verdict: alive, SERVING, every slot back, no thread died."""
    assert node.proc.poll() is None, f"the node exited with {node.proc.returncode}:\n{node.log()[-3000:]}"
    health = health_pb2_grpc.HealthStub(node.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )

    def idle() -> bool:
        info = node.info()
        return info.slots_busy == 0 and info.queue_depth == 0

    assert wait_for(idle, timeout=30), node.info()
    log = node.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 500 : log.find("Traceback") + 3000]


@SETTINGS
@given(req=generate_requests())
def test_generate_takes_any_field_values(prop_node: NodeProcess, req: pb.GenerateRequest) -> None:
    def call() -> None:
        stream = prop_node.stub.Generate(req, timeout=5)
        for i, _ in enumerate(stream):
            if i >= 1:
                stream.cancel()

    _typed(prop_node, call)


@SETTINGS
@given(texts=st.lists(text, max_size=5), normalize=st.booleans())
def test_embed_takes_any_texts(prop_node: NodeProcess, texts: list[str], normalize: bool) -> None:
    _typed(prop_node, lambda: prop_node.stub.Embed(pb.EmbedRequest(texts=texts, normalize=normalize), timeout=10))


@SETTINGS
@given(
    collection=names,
    version=st.text(max_size=40),
    docs=st.lists(
        st.builds(
            lambda i, t, d, m, f: pb.Document(id=i, text=t, data=d, metadata=m, format=f),
            names,
            st.text(max_size=200),
            st.binary(max_size=100),
            st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
            st.sampled_from(["", "auto", "markdown", "text", "pdf"]),
        ),
        max_size=3,
    ),
)
def test_knowledge_calls_take_any_values(
    prop_node: NodeProcess, collection: str, version: str, docs: list[pb.Document]
) -> None:
    stub = prop_node.stub
    _typed(
        prop_node,
        lambda: stub.Ingest(pb.IngestRequest(collection=collection, documents=docs, version=version), timeout=20),
    )
    _typed(
        prop_node,
        lambda: stub.Retrieve(pb.RetrieveRequest(collection=collection, query=version, top_k=len(docs)), timeout=10),
    )
    _typed(
        prop_node,
        lambda: stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=[version]), timeout=10),
    )
    _typed(prop_node, lambda: stub.ListCollections(pb.ListCollectionsRequest(), timeout=10))


METHODS = ["Generate", "Embed", "GetNodeInfo", "Ingest", "DeleteDocuments", "ListCollections", "Retrieve"]


@SETTINGS
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=300))
def test_any_bytes_at_any_method(prop_node: NodeProcess, method: str, raw: bytes) -> None:
    path = f"/edgefleet.v1.Inference/{method}"

    def call() -> None:
        if method == "Generate":
            stream = prop_node.channel.unary_stream(path)(raw, timeout=5)
            for i, _ in enumerate(stream):
                if i >= 1:
                    stream.cancel()
        else:
            prop_node.channel.unary_unary(path)(raw, timeout=10)

    _typed(prop_node, call)


def test_the_node_still_generates_after_hostile_requests(prop_node: NodeProcess) -> None:
    """A whole node also answers: a few hostile requests, then a plain one (runs alone or in any order)."""
    generate = prop_node.channel.unary_stream("/edgefleet.v1.Inference/Generate")
    _typed(prop_node, lambda: list(generate(b"\xff" * 40, timeout=5)))  # not a protobuf message
    for bad in (pb.GenerateRequest(prompt="x", max_tokens=-5), pb.GenerateRequest(prompt="x", json_schema="{")):
        _typed(prop_node, lambda bad=bad: list(prop_node.stub.Generate(bad, timeout=5)))
    _, last, _ = collect(prop_node.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=3), timeout=30))
    assert last.usage.completion_tokens == 3 and not math.isnan(last.usage.tokens_per_second)
    _whole(prop_node)
