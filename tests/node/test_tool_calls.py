"""Tool calls through real gRPC on a real node (SmolLM2, the generic format): every call validates.

`required` and a named function are enforced from the first token, `auto` from `<tool_call>` on,
`none` makes no call; streamed, a call opens with its index, id and name and its arguments follow;
a tool result sent back gets an answer; what cannot be honoured is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import collect

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TICKET = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "priority": {"type": "string", "enum": ["low", "high"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "priority"],
}
SCHEMAS = {"get_weather": WEATHER, "open_ticket": TICKET}
TOOLS = [
    pb.Tool(name="get_weather", description="Current weather in a city", parameters_json=json.dumps(WEATHER)),
    pb.Tool(name="open_ticket", description="Open a maintenance ticket", parameters_json=json.dumps(TICKET)),
]
WEATHER_Q = [pb.ChatMessage(role="user", content="What is the weather in Paris right now?")]
MARKUP = ("<tool_call>", "</tool_call>", "<tool", "tool_call")


def ask(stub: pb_grpc.InferenceStub, rid: str, **kw: Any) -> Iterator[pb.GenerateChunk]:
    kw.setdefault("messages", WEATHER_Q)
    kw.setdefault("tools", TOOLS)
    req = pb.GenerateRequest(temperature=0.0, max_tokens=kw.pop("max_tokens", 120), **kw)
    return stub.Generate(req, metadata=(("x-request-id", rid),), timeout=120)  # type: ignore[no-any-return]


def calls_of(chunks: list[pb.GenerateChunk]) -> list[dict[str, str]]:
    """Whole calls from the streamed fragments, checking OpenAI's shape on the way: a call opens with
    its index, id and name (once), its later fragments carry only the index and more arguments."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for d in chunk.tool_calls:
            if d.index not in calls:
                assert d.id and d.name, f"call {d.index} opened without id or name: {d}"
                assert d.index == len(calls), "calls are numbered 0, 1, … in order"
                calls[d.index] = {"id": d.id, "name": d.name, "arguments": d.arguments}
            else:
                assert not d.id and not d.name, f"call {d.index} sent its id or name twice"
                calls[d.index]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


def assert_valid(call: dict[str, str], rid: str, index: int) -> dict[str, Any]:
    assert call["id"] == f"call_{rid.replace('-', '')[:12]}_{index}"
    assert call["name"] in SCHEMAS
    args = json.loads(call["arguments"])
    jsonschema.validate(args, SCHEMAS[call["name"]])
    return args  # type: ignore[no-any-return]


def run(stub: pb_grpc.InferenceStub, rid: str, **kw: Any) -> tuple[str, list[dict[str, str]], pb.GenerateChunk]:
    chunks = list(ask(stub, rid, **kw))
    text = "".join(c.text for c in chunks)
    for marker in MARKUP:
        assert marker not in text, f"tool markup leaked into the content: {text!r}"
    return text, calls_of(chunks), chunks[-1]


def test_required_gives_calls_that_validate(stub: pb_grpc.InferenceStub) -> None:
    rid = "req-required-1"
    text, calls, final = run(stub, rid, tool_choice=pb.ToolChoice(mode="required"))
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert calls and text == ""
    for i, call in enumerate(calls):
        assert_valid(call, rid, i)


def test_a_named_function_is_the_one_called(stub: pb_grpc.InferenceStub) -> None:
    rid = "req-named-1"
    _text, calls, final = run(stub, rid, tool_choice=pb.ToolChoice(mode="function", function="open_ticket"))
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c["name"] for c in calls] == ["open_ticket"]
    args = assert_valid(calls[0], rid, 0)
    assert args["priority"] in ("low", "high")


def test_parallel_false_gives_at_most_one_call(stub: pb_grpc.InferenceStub) -> None:
    rid = "req-single-1"
    two = [pb.ChatMessage(role="user", content="Weather in Paris and in Rome? Also open a ticket for the pump.")]
    _, calls, final = run(
        stub, rid, messages=two, tool_choice=pb.ToolChoice(mode="required"), parallel_tool_calls=False
    )
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert len(calls) == 1
    assert_valid(calls[0], rid, 0)


def test_auto_calls_a_tool_or_answers_and_never_leaks_markup(stub: pb_grpc.InferenceStub) -> None:
    rid = "req-auto-1"
    text, calls, final = run(stub, rid)  # tool_choice left out: auto
    if calls:
        assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        for i, call in enumerate(calls):
            assert_valid(call, rid, i)
    else:
        assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) and text.strip()


def test_none_answers_in_text_without_calls(stub: pb_grpc.InferenceStub) -> None:
    text, calls, final = run(stub, "req-none-1", tool_choice=pb.ToolChoice(mode="none"), max_tokens=40)
    assert calls == [] and text.strip()
    assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def test_a_tool_result_sent_back_gets_an_answer(stub: pb_grpc.InferenceStub) -> None:
    call = pb.ToolCall(id="call_abc_0", name="get_weather", arguments='{"city": "Paris"}')
    messages = [
        *WEATHER_Q,
        pb.ChatMessage(role="assistant", tool_calls=[call]),
        pb.ChatMessage(role="tool", tool_call_id="call_abc_0", content='{"temperature_c": 21, "sky": "sunny"}'),
    ]
    text, calls, final = run(stub, "req-result-1", messages=messages, tool_choice=pb.ToolChoice(mode="none"))
    assert calls == [] and text.strip()
    assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def _tool(name: str = "t", params: str = '{"type": "object", "properties": {}}') -> pb.Tool:
    return pb.Tool(name=name, description="d", parameters_json=params)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tools": [_tool("bad name")]}, "tools[0].function.name"),
        ({"tools": [_tool("a"), _tool("b"), _tool("a")]}, "tools[2].function.name"),
        ({"tools": [_tool(), _tool("u", "{not json")]}, "tools[1].function.parameters"),
        ({"tools": [_tool(), _tool("u", '{"type": "string"}')]}, "tools[1].function.parameters"),
        ({"tools": [_tool("u", '{"type": "object", "properties": {"x": {"type": "nonsense"}}}')]}, "tools[0]"),
        ({"tools": [_tool(f"t{i}") for i in range(33)]}, "tools: at most 32"),
        ({"tool_choice": pb.ToolChoice(mode="function", function="nope")}, "tool_choice.function"),
        ({"tool_choice": pb.ToolChoice(mode="sometimes")}, "tool_choice.mode"),
        ({"tools": [], "tool_choice": pb.ToolChoice(mode="required")}, "tool_choice needs tools"),
        ({"json_schema": '{"type": "object"}'}, "json_schema and tools"),
        (
            {"messages": [*WEATHER_Q, pb.ChatMessage(role="tool", tool_call_id="call_x_0", content="3")]},
            "messages[1].tool_call_id",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(
    stub: pb_grpc.InferenceStub, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        collect(ask(stub, "req-bad", **change))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (e.value.details() or ""), e.value.details()
