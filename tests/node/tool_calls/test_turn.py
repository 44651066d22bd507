"""run_turn: the in-process way to one model turn with tools (what the node's agent loop calls)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest

from edgefleet.node.engine.types import FinishReason
from edgefleet.node.errors import InvalidRequest
from edgefleet.node.runtime import Node, build_node
from edgefleet.node.service_types import ChatTurn, GenerateInput
from edgefleet.node.settings import NodeSettings
from edgefleet.node.tool_calls.turn import DeadlineExceeded, run_turn
from edgefleet.node.tool_calls.types import ToolChoice, ToolDef

READ = {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}
TOOLS = (ToolDef("read_sensor", "Latest value of a sensor topic", READ),)
ASK = (ChatTurn("user", "What does the sensor site/boiler/temp read?"),)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = NodeSettings(data_dir=tmp_path_factory.mktemp("turn"), threads=1, knowledge=False)
    n = build_node(settings)
    yield n
    n.close()


def test_a_required_turn_returns_a_call_that_validates(node: Node) -> None:
    inp = GenerateInput(
        messages=ASK,
        tools=TOOLS,
        tool_choice=ToolChoice("required"),
        parallel_tool_calls=False,  # an agent takes one step at a time
        temperature=0.0,
        max_tokens=60,
    )
    result = run_turn(node.service, inp, "turn-1", timeout_s=60)
    assert result.finish_reason is FinishReason.TOOL_CALLS and result.content == ""
    assert [c.name for c in result.tool_calls] == ["read_sensor"]
    assert result.tool_calls[0].id == "call_turn1_0"
    jsonschema.validate(json.loads(result.tool_calls[0].arguments), READ)
    assert result.usage.completion_tokens > 0


def test_bad_input_raises_the_typed_error(node: Node) -> None:
    inp = GenerateInput(messages=ASK, tools=TOOLS, tool_choice=ToolChoice("function", "nope"))
    with pytest.raises(InvalidRequest, match=r"tool_choice\.function"):
        run_turn(node.service, inp, "turn-2", timeout_s=60)


def test_a_turn_past_its_time_is_cancelled(node: Node) -> None:
    inp = GenerateInput(messages=ASK, temperature=0.0, max_tokens=400)
    with pytest.raises(DeadlineExceeded):
        run_turn(node.service, inp, "turn-3", timeout_s=0.05)
    after = run_turn(node.service, GenerateInput(messages=ASK, temperature=0.0, max_tokens=5), "turn-4", 60)
    assert after.finish_reason in (FinishReason.STOP, FinishReason.LENGTH), "the engine goes on serving"
