"""Every bad input gets its status, its ErrorCode (trailing metadata) and a message a person can act
on; the node survives all."""

from __future__ import annotations

import json

import grpc
import pytest

from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess

USER = [pb.ChatMessage(role="user", content="hello")]

INVALID = {
    "empty prompt and messages": (pb.GenerateRequest(), "empty"),
    "both prompt and messages": (pb.GenerateRequest(prompt="x", messages=USER), "not both"),
    "unknown role": (pb.GenerateRequest(messages=[pb.ChatMessage(role="robot", content="hi")]), "robot"),
    "max_tokens zero": (pb.GenerateRequest(prompt="x", max_tokens=0), "max_tokens"),
    "max_tokens negative": (pb.GenerateRequest(prompt="x", max_tokens=-5), "max_tokens"),
    "max_tokens over the limit": (pb.GenerateRequest(prompt="x", max_tokens=1_000_000), "max_tokens"),
    "negative temperature": (pb.GenerateRequest(prompt="x", temperature=-0.5), "temperature"),
    "top_p zero": (pb.GenerateRequest(prompt="x", top_p=0.0), "top_p"),
    "schema not json": (pb.GenerateRequest(prompt="x", json_schema="{not json"), "not valid JSON"),
    "schema not a schema": (
        pb.GenerateRequest(prompt="x", json_schema=json.dumps({"type": "no-such-type"})),
        "not a valid JSON schema",
    ),
    "empty stop string": (pb.GenerateRequest(prompt="x", stop=[""]), "stop"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_argument(stub, case: str) -> None:
    request, words = INVALID[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request, timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sent_code(err.value) == ErrorCode.INVALID_REQUEST
    assert words in err.value.details()


def test_prompt_longer_than_the_context_names_count_and_limit(node: NodeProcess) -> None:
    n_ctx = node.info().n_ctx
    prompt = "word " * (n_ctx + 100)
    with pytest.raises(grpc.RpcError) as err:
        list(node.stub.Generate(pb.GenerateRequest(prompt=prompt, max_tokens=4), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sent_code(err.value) == ErrorCode.CONTEXT_OVERFLOW
    details = err.value.details()
    assert str(n_ctx) in details and "tokens" in details


def test_unknown_adapter_is_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(prompt="x", adapter="alarm-classifier"), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert sent_code(err.value) == ErrorCode.NOT_FOUND
    assert "alarm-classifier" in err.value.details()


def test_request_over_the_message_limit_is_refused_by_grpc(stub) -> None:
    huge = "a" * (17 * 1024 * 1024)  # default limit 16 MiB
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(prompt=huge), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sent_code(err.value) is None  # grpc's own refusal: the node never saw the request
    assert "larger than max" in err.value.details()


def test_embed_bad_input(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(texts=[]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sent_code(err.value) == ErrorCode.INVALID_REQUEST
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(texts=["ok", "   "]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(texts=["word " * 2000]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_node_still_serves_after_bad_input(node: NodeProcess) -> None:
    for request, _ in INVALID.values():
        with pytest.raises(grpc.RpcError):
            list(node.stub.Generate(request, timeout=10))
    chunks = list(node.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=3, temperature=0), timeout=30))
    assert chunks[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert node.proc.poll() is None
    assert node.info().slots_busy == 0
