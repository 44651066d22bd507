"""The response cache and tools: an answer made with one list of tools never answers a request with
another, and a cached answer gives back its tool calls (real node, real SQLite cache, real gRPC)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess
from tests.node.test_tool_calls import TOOLS, WEATHER_Q, calls_of


@pytest.fixture(scope="module")
def cached_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("cache"), env={"EDGEFLEET_RESPONSE_CACHE": "true"})
    try:
        n.wait_serving()
        yield n
    finally:
        n.stop()


def _ask(node: NodeProcess, tools: list[pb.Tool]) -> list[pb.GenerateChunk]:
    req = pb.GenerateRequest(
        messages=WEATHER_Q, tools=tools, tool_choice=pb.ToolChoice(mode="required"), temperature=0.0, max_tokens=80
    )
    return list(node.stub.Generate(req, metadata=(("x-request-id", "cache-req-1"),), timeout=120))


def test_a_cached_tool_answer_is_only_served_for_the_same_tools(cached_node: NodeProcess) -> None:
    first = _ask(cached_node, TOOLS)
    assert not first[-1].cached and first[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    again = _ask(cached_node, TOOLS)
    assert again[-1].cached, "the same request with the same tools is answered from the cache"
    assert calls_of(again) == calls_of(first) and again[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    other_schema = json.loads(TOOLS[0].parameters_json) | {"required": ["city", "unit"]}
    other = [pb.Tool(name=TOOLS[0].name, description=TOOLS[0].description, parameters_json=json.dumps(other_schema))]
    changed = _ask(cached_node, other)
    assert not changed[-1].cached, "another list of tools is a miss"
    assert {c["name"] for c in calls_of(changed)} == {"get_weather"}
