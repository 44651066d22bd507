"""OpenAI tools → the gRPC contract, pure: what is accepted maps field by field, every refusal names its field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.orchestrator.front_door import openai_schema as schema
from edgefleet.orchestrator.front_door.openai_tools import MAX_TOOLS, DeltaMapper, gather
from edgefleet.proto.v1 import inference_pb2 as pb

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
VALVE = {"type": "function", "function": {"name": "close-valve_2"}}  # no description, no parameters
USER = {"role": "user", "content": "Weather in Oslo?"}
CALL = {"id": "call_abc_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **extra}


def refused(body: dict[str, Any], endpoint: str = "chat") -> schema.BodyError:
    parse = schema.parse_chat if endpoint == "chat" else schema.parse_completion
    with pytest.raises(schema.BodyError) as e:
        parse(body)
    return e.value


def test_tools_choice_and_flags_map_to_the_request() -> None:
    call = schema.parse_chat(
        chat(
            tools=[WEATHER, VALVE],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            tools_unconstrained=True,
        )
    )
    req = call.request
    assert [t.name for t in req.tools] == ["get_weather", "close-valve_2"]
    assert req.tools[0].description == "The weather in a city."
    assert json.loads(req.tools[0].parameters_json) == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert req.tools[1].description == "" and req.tools[1].parameters_json == ""
    assert (req.tool_choice.mode, req.tool_choice.function) == ("function", "get_weather")
    assert req.HasField("parallel_tool_calls") and req.parallel_tool_calls is False
    assert req.tools_unconstrained is True
    pb.GenerateRequest.FromString(req.SerializeToString())  # it travels


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_each_choice_mode(mode: str) -> None:
    req = schema.parse_chat(chat(tools=[WEATHER], tool_choice=mode)).request
    assert req.tool_choice.mode == mode and req.tool_choice.function == ""


def test_defaults_leave_the_choice_and_parallel_unset() -> None:
    req = schema.parse_chat(chat(tools=[WEATHER])).request
    assert not req.HasField("tool_choice") and not req.HasField("parallel_tool_calls")
    assert req.tools_unconstrained is False
    plain = schema.parse_chat(chat()).request
    assert not plain.tools and not plain.HasField("tool_choice")


def test_a_text_response_format_stands_beside_tools() -> None:
    req = schema.parse_chat(chat(tools=[WEATHER], response_format={"type": "text"})).request
    assert req.json_schema == "" and len(req.tools) == 1


def test_a_conversation_with_calls_and_their_results() -> None:
    body = chat(
        tools=[WEATHER],
        messages=[
            {"role": "developer", "content": "Be brief."},
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_abc_1"}], "refusal": None},
            {"role": "tool", "tool_call_id": "call_abc_0", "content": '{"temp_c": 3}'},
            {"role": "tool", "tool_call_id": "call_abc_1", "name": "get_weather", "content": [{"type": "text",
                                                                                                  "text": "4"}]},
        ],
    )  # fmt: skip
    call = schema.parse_chat(body)
    m = call.request.messages
    assert [x.role for x in m] == ["system", "user", "assistant", "tool", "tool"]
    assert m[2].content == "" and [(c.id, c.name, c.arguments) for c in m[2].tool_calls] == [
        ("call_abc_0", "get_weather", '{"city": "Oslo"}'),
        ("call_abc_1", "get_weather", '{"city": "Oslo"}'),
    ]
    assert (m[3].tool_call_id, m[3].name, m[3].content) == ("call_abc_0", "get_weather", '{"temp_c": 3}')
    assert (m[4].tool_call_id, m[4].content) == ("call_abc_1", "4")
    assert call.messages[0] == ("system", "Be brief.")


def test_an_assistant_message_with_text_and_calls_keeps_both() -> None:
    msg = {"role": "assistant", "content": "Checking.", "tool_calls": [{**CALL, "index": 0}]}
    m = schema.parse_chat(chat(messages=[USER, msg])).request.messages[1]
    assert m.content == "Checking." and m.tool_calls[0].id == "call_abc_0"


def test_a_message_name_travels() -> None:
    m = schema.parse_chat(chat(messages=[{"role": "user", "content": "hi", "name": "ana"}])).request.messages[0]
    assert m.name == "ana"


BAD_TOOLS: list[tuple[Any, str]] = [
    ([], "tools"),
    ({"type": "function"}, "tools"),
    ([WEATHER] * 0 + [VALVE] * (MAX_TOOLS + 1), "tools"),
    (["get_weather"], "tools[0]"),
    ([WEATHER, {"type": "retrieval"}], "tools[1].type"),
    ([{"type": "code_interpreter"}], "tools[0].type"),
    ([WEATHER, {"type": "function"}], "tools[1].function"),
    ([{"type": "function", "function": {"name": "f"}, "extra": 1}], "tools[0].extra"),
    ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
    ([WEATHER, {"type": "function", "function": {"name": "has space"}}], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
    ([WEATHER, WEATHER], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict"),
    ([{"type": "function", "function": {"name": "f", "examples": []}}], "tools[0].function.examples"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
     "tools[0].function.parameters.type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {
        "type": "strang"}}}}}], "tools[0].function.parameters.properties.a.type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "a"}}}],
     "tools[0].function.parameters.required"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {
        "type": "number", "maximum": float("nan")}}}}}], "tools[0].function.parameters"),
]  # fmt: skip


@pytest.mark.parametrize(("tools", "param"), BAD_TOOLS)
def test_a_bad_tool_definition_is_named(tools: Any, param: str) -> None:
    e = refused(chat(tools=tools))
    assert e.param == param, e.message
    assert param.split(".")[0].split("[")[0] in e.message


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "none"}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"tools_unconstrained": True}, "tools_unconstrained"),
    ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": 1}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "custom", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather", "x": 1}}},
     "tool_choice.function.x"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}, "x": 1}},
     "tool_choice.x"),
    ({"tools": [WEATHER], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "tools_unconstrained": 1}, "tools_unconstrained"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"tools": [WEATHER], "function_call": {"name": "get_weather"}}, "function_call"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param"), BAD_FIELDS)
def test_what_cannot_be_honoured_is_refused_naming_the_field(extra: dict[str, Any], param: str) -> None:
    e = refused(chat(**extra))
    assert e.param == param, e.message
    assert param.split(".")[0] in e.message


def test_legacy_functions_point_at_tools() -> None:
    assert "'tools'" in refused(chat(functions=[WEATHER["function"]])).message


def _conversation(*messages: dict[str, Any]) -> dict[str, Any]:
    return chat(messages=[USER, *messages])


ASSISTANT = {"role": "assistant", "content": None, "tool_calls": [CALL]}
BAD_MESSAGES: list[tuple[dict[str, Any], str]] = [
    (_conversation({"role": "assistant", "content": None}), "messages[1].content"),
    (_conversation({"role": "assistant", "tool_calls": []}), "messages[1].tool_calls"),
    (_conversation({"role": "assistant", "tool_calls": CALL}), "messages[1].tool_calls"),
    (_conversation({"role": "assistant", "tool_calls": ["x"]}), "messages[1].tool_calls[0]"),
    (_conversation({"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}), "messages[1].tool_calls[0].id"),
    (_conversation({"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}), "messages[1].tool_calls[0].type"),
    (_conversation({"role": "assistant", "tool_calls": [{**CALL, "extra": 1}]}), "messages[1].tool_calls[0].extra"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}),
     "messages[1].tool_calls[0].function"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "a b", "arguments": "{}"}}]}),
     "messages[1].tool_calls[0].function.name"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}),
     "messages[1].tool_calls[0].function.arguments"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}),
     "messages[1].tool_calls[0].function.arguments"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}),
     "messages[1].tool_calls[0].function.arguments"),
    (_conversation({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}",
                                                                                  "x": 1}}]}),
     "messages[1].tool_calls[0].function.x"),
    (_conversation({"role": "assistant", "tool_calls": [CALL, CALL]}), "messages[1].tool_calls[1].id"),
    (_conversation({**ASSISTANT, "refusal": "no"}), "messages[1].refusal"),
    (_conversation({**ASSISTANT, "function_call": {"name": "f"}}), "messages[1].function_call"),
    (_conversation({"role": "user", "content": "x", "tool_calls": [CALL]}), "messages[1].tool_calls"),
    (_conversation({"role": "user", "content": "x", "tool_call_id": "c"}), "messages[1].tool_call_id"),
    (_conversation({"role": "user", "content": "x", "name": 3}), "messages[1].name"),
    (_conversation({"role": "tool", "content": "3"}), "messages[1].tool_call_id"),
    (_conversation({"role": "tool", "content": "3", "tool_call_id": 7}), "messages[1].tool_call_id"),
    (_conversation({"role": "tool", "content": "3", "tool_call_id": "call_abc_0"}), "messages[1].tool_call_id"),
    (_conversation(ASSISTANT, {"role": "tool", "content": "3", "tool_call_id": "call_zzz"}),
     "messages[2].tool_call_id"),
    (_conversation(ASSISTANT, {"role": "tool", "content": "3", "tool_call_id": "call_abc_0", "name": "other"}),
     "messages[2].name"),
    (_conversation(ASSISTANT, {"role": "tool", "tool_call_id": "call_abc_0"}), "messages[2].content"),
    (_conversation(ASSISTANT, {"role": "tool", "content": "3", "tool_call_id": "call_abc_0", "tool_calls": [CALL]}),
     "messages[2].tool_calls"),
    (_conversation({"role": "function", "name": "f", "content": "3"}), "messages[1].role"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), BAD_MESSAGES)
def test_a_bad_call_or_tool_message_is_named(body: dict[str, Any], param: str) -> None:
    e = refused(body)
    assert e.param == param, e.message
    assert param.split(".")[0] in e.message


@pytest.mark.parametrize("key", ["tools", "tool_choice", "parallel_tool_calls", "tools_unconstrained", "functions"])
def test_completions_refuse_tools_naming_them(key: str) -> None:
    value: Any = {"tools": [WEATHER], "tool_choice": "auto", "functions": [WEATHER["function"]]}.get(key, True)
    e = refused({"model": "m", "prompt": "hi", key: value}, "completions")
    assert e.param == key and key in e.message


def test_gather_and_deltas_follow_openai() -> None:
    chunks = [
        pb.GenerateChunk(tool_calls=[pb.ToolCallDelta(index=0, id="call_x_0", name="a", arguments='{"k"')]),
        pb.GenerateChunk(
            tool_calls=[pb.ToolCallDelta(index=0, arguments=": 1}"), pb.ToolCallDelta(index=1, id="call_x_1", name="b")]
        ),
        pb.GenerateChunk(
            tool_calls=[pb.ToolCallDelta(index=1, arguments="{}")], finish_reason=pb.FINISH_REASON_TOOL_CALLS
        ),
    ]
    assert gather(chunks) == [
        {"id": "call_x_0", "type": "function", "function": {"name": "a", "arguments": '{"k": 1}'}},
        {"id": "call_x_1", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]
    m = DeltaMapper()
    assert [m.entries(c.tool_calls) for c in chunks] == [
        [{"index": 0, "id": "call_x_0", "type": "function", "function": {"name": "a", "arguments": '{"k"'}}],
        [
            {"index": 0, "function": {"arguments": ": 1}"}},
            {"index": 1, "id": "call_x_1", "type": "function", "function": {"name": "b", "arguments": ""}},
        ],
        [{"index": 1, "function": {"arguments": "{}"}}],
    ]
    assert m.entries([pb.ToolCallDelta(index=1, id="call_x_1", name="b", arguments="")]) == []  # id, name: once


# -- property: any one change to a valid tools body is accepted, or refused naming a field ---------------------
def _paths(v: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    out = [at] if at else []
    for k, item in items:
        out.extend(_paths(item, (*at, k)))
    return out


_scalars = st.none() | st.booleans() | st.integers(-3, 40) | st.floats() | st.text(max_size=8) | st.sampled_from(
    ["function", "auto", "none", "required", "get_weather", "object", "string", "{}", '{"a": 1}', "call_abc_0"]
)  # fmt: skip
_json = st.recursive(_scalars, lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=6), i, max_size=3),
                     max_leaves=8)  # fmt: skip
VALID = chat(
    tools=[WEATHER, VALVE],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    parallel_tool_calls=True,
    messages=[USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "call_abc_0", "content": "3"}],
)  # fmt: skip


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data())
def test_one_change_anywhere_is_accepted_or_named(data: st.DataObject) -> None:
    body = copy.deepcopy(VALID)
    path = data.draw(st.sampled_from(_paths(body)))
    parent = body
    for k in path[:-1]:
        parent = parent[k]
    how = data.draw(st.sampled_from(["set", "drop", "add"]))
    if how == "set":
        parent[path[-1]] = data.draw(_json)
    elif how == "drop":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(_json)
    try:
        call = schema.parse_chat(body)
    except schema.BodyError as e:
        assert e.param is not None and e.message, (e.param, body)
        keys = {*body, "messages", "model"}  # a required one may be the one dropped
        assert any(e.param == k or e.param.startswith((k + ".", k + "[")) for k in keys), (e.param, body)
        return
    pb.GenerateRequest.FromString(call.request.SerializeToString())
    req = call.request
    names = [t.name for t in req.tools]
    assert len(set(names)) == len(names) and all(names)
    assert all(not t.parameters_json or isinstance(json.loads(t.parameters_json), dict) for t in req.tools)
    assert req.tool_choice.mode != "function" or req.tool_choice.function in names
    assert req.tools or not (req.HasField("tool_choice") or req.HasField("parallel_tool_calls"))
    ids = {c.id for m in req.messages for c in m.tool_calls}
    assert all(m.tool_call_id in ids for m in req.messages if m.role == "tool")
