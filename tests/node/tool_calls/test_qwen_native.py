"""Qwen 2.5's own tool-call format on a real node over real gRPC: its chat template describes the
tools, `<tool_call>` is one special token that triggers the grammar under `auto`, and its text
never reaches the content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import NodeProcess
from tests.node.test_tool_calls import SCHEMAS, TOOLS, ask, assert_valid, calls_of, run

QWEN = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.InferenceStub]:
    tmp: Path = tmp_path_factory.mktemp("qwen-node")
    node = NodeProcess(tmp, env={"EDGEFLEET_MODEL": QWEN})
    try:
        node.wait_serving(timeout=180)
        assert node.info().model.name == QWEN
        yield node.stub
    finally:
        node.stop()


def test_auto_calls_the_right_tool_through_the_special_token(qwen: pb_grpc.InferenceStub) -> None:
    rid = "qwen-auto-1"
    text, calls, final = run(qwen, rid, max_tokens=80)
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert text == ""
    assert [c["name"] for c in calls] == ["get_weather"]
    assert assert_valid(calls[0], rid, 0)["city"] == "Paris"


def test_auto_answers_in_text_when_no_tool_fits(qwen: pb_grpc.InferenceStub) -> None:
    hello = [pb.ChatMessage(role="user", content="Say hello to me in three words.")]
    text, calls, final = run(qwen, "qwen-auto-2", messages=hello, max_tokens=30)
    assert calls == [] and text.strip()
    assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def test_required_with_two_questions_gives_parallel_calls(qwen: pb_grpc.InferenceStub) -> None:
    rid = "qwen-required-1"
    two = [pb.ChatMessage(role="user", content="What is the weather in Paris and in Rome?")]
    text, calls, final = run(qwen, rid, messages=two, tool_choice=pb.ToolChoice(mode="required"), max_tokens=120)
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS and text == ""
    assert len(calls) >= 1
    for i, call in enumerate(calls):
        assert_valid(call, rid, i)


def test_none_answers_in_text_not_with_a_call_in_the_content(qwen: pb_grpc.InferenceStub) -> None:
    text, calls, _final = run(qwen, "qwen-none-1", tool_choice=pb.ToolChoice(mode="none"), max_tokens=40)
    assert calls == [] and text.strip()
    assert '"name"' not in text and "get_weather" not in text, f"a call written into the content: {text!r}"


def test_a_tool_result_in_the_native_format_gets_an_answer_from_it(qwen: pb_grpc.InferenceStub) -> None:
    call = pb.ToolCall(id="call_abc_0", name="get_weather", arguments='{"city": "Paris"}')
    messages = [
        pb.ChatMessage(role="user", content="What is the weather in Paris right now?"),
        pb.ChatMessage(role="assistant", tool_calls=[call]),
        pb.ChatMessage(role="tool", tool_call_id="call_abc_0", content=json.dumps({"temperature_c": 21})),
        # Without this, Qwen2.5-Coder-0.5B calls get_weather again (measured: the same with no tools
        # at all); a client or agent that wants the answer says so.
        pb.ChatMessage(role="system", content="Answer the user's question from the tool result, in words."),
    ]
    text, calls, final = run(qwen, "qwen-result-1", messages=messages, max_tokens=60)
    assert calls == [] and "21" in text
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert set(SCHEMAS) == {t.name for t in TOOLS}


STRICT_TICKET = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "priority": {"type": "string", "enum": ["low", "high"]},
    },
    "required": ["title", "priority"],
}
STRICT = [
    pb.Tool(name="open_ticket", description="Open a maintenance ticket", parameters_json=json.dumps(STRICT_TICKET))
]
LEAK = [pb.ChatMessage(role="user", content="Open a high priority ticket: pump 3 is leaking.")]


def test_auto_enforces_the_call_once_it_starts_and_unconstrained_returns_an_invalid_one_as_text(
    qwen: pb_grpc.InferenceStub,
) -> None:
    chunks = list(ask(qwen, "qwen-strict-1", messages=LEAK, tools=STRICT, max_tokens=80))
    calls = calls_of(chunks)
    assert chunks[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert len(calls) == 1
    jsonschema.validate(json.loads(calls[0]["arguments"]), STRICT_TICKET)
    loose = list(ask(qwen, "qwen-strict-2", messages=LEAK, tools=STRICT, max_tokens=80, tools_unconstrained=True))
    assert calls_of(loose) == [], "the model's own call has a title longer than the schema allows"
    assert '"name": "open_ticket"' in "".join(c.text for c in loose)
    assert loose[-1].finish_reason == pb.FINISH_REASON_STOP


def test_the_generic_format_can_be_chosen_for_a_native_model(tmp_path: Path) -> None:
    """EDGEFLEET_TOOL_FORMAT=generic: Qwen gets edgefleet's own tool description and markup (no tools in
    its template), and its calls are still held to their schemas and parsed out of the text."""
    node = NodeProcess(tmp_path, env={"EDGEFLEET_MODEL": QWEN, "EDGEFLEET_TOOL_FORMAT": "generic"})
    try:
        node.wait_serving(timeout=180)
        rid = "qwen-generic-1"
        text, calls, final = run(node.stub, rid, tool_choice=pb.ToolChoice(mode="required"), max_tokens=80)
        assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS and text == ""
        assert [c["name"] for c in calls] == ["get_weather"]
        assert assert_valid(calls[0], rid, 0)["city"] == "Paris"
    finally:
        node.stop()
