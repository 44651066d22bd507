"""OpenAI tools end to end: the official `openai` client through the real front door (TLS, broker,
orchestrator, nodes), for every bundled model, and the same fields through the gRPC front door.

The package's site serves the default model (fd-a, fd-b); for each other bundled model this module
starts one node beside them and stops it after its tests, until the front door no longer routes it.

Each call's id, name and arguments are checked as a client uses them: ids present, distinct and
stable across the stream, arguments that parse and validate against their tool's schema,
`finish_reason: "tool_calls"`, no tool markup in `content`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageToolCall

from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import wait_for
from tests.orchestrator.front_door.conftest import Site
from tests.orchestrator.front_door.test_openai_front_door import curl

MAX_TOKENS = 128
VALVE: dict[str, Any] = {
    "type": "object",
    "properties": {"valve": {"type": "integer", "enum": [1, 2, 3, 4, 5, 6, 7, 8]}, "open": {"type": "boolean"}},
    "required": ["valve", "open"],
    "additionalProperties": False,
}
READING = {
    "type": "object",
    "properties": {"sensor": {"type": "string", "enum": ["temperature", "pressure", "flow"]}},
    "required": ["sensor"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "set_valve", "description": "Open or close a valve (1-8).",
                                      "parameters": VALVE, "strict": True}},
    {"type": "function", "function": {"name": "read_sensor", "description": "Read the latest value of a sensor.",
                                      "parameters": READING, "strict": True}},
]  # fmt: skip
SCHEMAS = {"set_valve": VALVE, "read_sensor": READING}
ASK: list[Any] = [
    {"role": "system", "content": "You operate a plant through tools."},
    {"role": "user", "content": "Close valve 3."},
]
MARKUP = re.compile(r"<tool_call>|</tool_call>|\"arguments\"\s*:|<\|")


# model → its node here. gemma-3-270m is a base model without a chat template: tools ride on chat, and
# its chat requests are refused (test_a_base_model_refuses_chat_with_tools_clearly).
EXTRA_MODELS = {"qwen2.5-coder-0.5b-instruct": "fd-qwen"}


@pytest.fixture(scope="module")
def client(site: Site) -> openai.OpenAI:
    return site_identity.site().openai(site.http + "/v1", timeout=120)


def default_model(site: Site) -> str:
    return next(m for m in site.serving() if ":" not in m and m not in EXTRA_MODELS)


@pytest.fixture(scope="module", params=["default", *EXTRA_MODELS])
def model(request: pytest.FixtureRequest, site: Site) -> Iterator[str]:
    """Each bundled model in turn: the site's own, then one node per other model."""
    if request.param == "default":
        yield default_model(site)
        return
    node_id = EXTRA_MODELS[request.param]
    node = site.start_node(node_id, EDGEFLEET_MODEL=request.param)
    try:
        site.wait_routable(node_id, timeout=60)
        yield request.param
    finally:
        node.stop()
        del site.nodes[node_id]
        gone = wait_for(lambda: request.param not in site.serving(), timeout=30)
        assert gone, f"the front door still routes {request.param}: {site.serving()}"


def ask(**kw: Any) -> dict[str, Any]:
    return {"messages": ASK, "tools": TOOLS, "max_tokens": MAX_TOKENS, "temperature": 0, **kw}


def valid_call(name: str, arguments: str) -> dict[str, Any]:
    """The call's arguments, parsed and held to its tool's schema."""
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    assert isinstance(args, dict)
    return args


def check_calls(calls: list[ChatCompletionMessageToolCall] | None, rid: str, names: set[str]) -> None:
    assert calls, "no tool calls"
    for i, c in enumerate(calls):
        assert c.type == "function" and c.function.name in names
        assert c.id == f"call_{re.sub(r'[^0-9A-Za-z]', '', rid)[:12]}_{i}", c.id
        valid_call(c.function.name, c.function.arguments)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "read_sensor"}}])
def test_a_required_or_named_call_validates(model: str, client: openai.OpenAI, choice: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, **ask(tool_choice=choice))
    resp, rid = raw.parse(), raw.headers["x-request-id"]
    choice0 = resp.choices[0]
    assert choice0.finish_reason == "tool_calls", raw.http_response.text
    names = {"read_sensor"} if isinstance(choice, dict) else set(SCHEMAS)
    check_calls(choice0.message.tool_calls, rid, names)
    assert choice0.message.content is None or not MARKUP.search(choice0.message.content)
    sent = json.loads(raw.http_response.text)["choices"][0]["message"]
    assert sent["role"] == "assistant" and set(sent) <= {"role", "content", "tool_calls"}


def test_one_call_when_parallel_calls_are_off(model: str, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=model, **ask(tool_choice="required", parallel_tool_calls=False))
    assert resp.choices[0].finish_reason == "tool_calls", resp.model_dump()
    assert len(resp.choices[0].message.tool_calls or []) == 1


def test_a_repeated_request_gets_its_own_calls_again(model: str, client: openai.OpenAI) -> None:
    """Greedy and seen before (the node's response cache may answer): still calls, ids of this request."""
    for rid in ("repeatcalls00001", "repeatcalls00002"):
        raw = client.chat.completions.with_raw_response.create(
            model=model, extra_headers={"x-request-id": rid}, **ask(tool_choice="required")
        )
        resp = raw.parse()
        assert resp.choices[0].finish_reason == "tool_calls"
        check_calls(resp.choices[0].message.tool_calls, rid, set(SCHEMAS))


def test_bounded_integers_are_enforced_or_refused(model: str, client: openai.OpenAI) -> None:
    """A schema the node may not be able to enforce (integer bounds): valid calls, or a 400 naming the
    parameters, never a call outside the bounds or an empty answer."""
    bounded: dict[str, Any] = {
        **VALVE,
        "properties": {**VALVE["properties"], "valve": {"type": "integer", "minimum": 1, "maximum": 8}},
    }
    tool: Any = {"type": "function", "function": {"name": "set_valve", "parameters": bounded}}
    choice: Any = {"type": "function", "function": {"name": "set_valve"}}
    messages: list[Any] = [ASK[0], {"role": "user", "content": "Close valve 10, then valve 3."}]
    try:
        resp = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=[tool],
            tool_choice=choice,
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
    except openai.BadRequestError as e:
        assert e.param is not None and e.param.startswith("tools[0].function.parameters"), e.body
        return
    assert resp.choices[0].finish_reason == "tool_calls", resp.model_dump()
    for c in resp.choices[0].message.tool_calls or []:
        assert c.type == "function"
        jsonschema.validate(json.loads(c.function.arguments), bounded)


def test_none_answers_in_text_without_calls_or_markup(model: str, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=model, **ask(tool_choice="none"))
    msg = resp.choices[0].message
    assert msg.tool_calls is None and resp.choices[0].finish_reason in ("stop", "length")
    assert msg.content and not MARKUP.search(msg.content)


def test_auto_gives_a_valid_call_or_clean_text(model: str, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, **ask(tool_choice="auto"))
    resp, rid = raw.parse(), raw.headers["x-request-id"]
    c = resp.choices[0]
    if c.finish_reason == "tool_calls":
        check_calls(c.message.tool_calls, rid, set(SCHEMAS))
    else:
        assert c.message.tool_calls is None and c.message.content
    assert c.message.content is None or not MARKUP.search(c.message.content)


def stream_chunks(client: openai.OpenAI, model: str, rid: str, **kw: Any) -> tuple[list[ChatCompletionChunk], Any]:
    """The chunks as sent, and the client's own accumulation of them (strict tools: arguments parsed).

    The accumulating helper raises on a `length` finish (it cannot parse a cut answer), which `auto`
    may rightly end with when the model answers in text: then the chunks come from a plain stream of
    the same request and the accumulation is None."""
    try:
        with client.chat.completions.stream(model=model, extra_headers={"x-request-id": rid}, **kw) as s:
            chunks = [e.chunk for e in s if e.type == "chunk"]
            final = s.get_final_completion()
        return chunks, final
    except openai.LengthFinishReasonError:
        plain = client.chat.completions.create(model=model, stream=True, extra_headers={"x-request-id": rid}, **kw)
        return list(plain), None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "set_valve"}}, "auto"])
def test_a_streamed_call_has_openai_shape(model: str, client: openai.OpenAI, choice: Any) -> None:
    rid = f"toolstream{len(str(choice))}abcdef"
    chunks, final = stream_chunks(client, model, rid, **ask(tool_choice=choice, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert not MARKUP.search(content), content
    if choice == "auto" and finishes != ["tool_calls"]:
        calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert finishes in (["stop"], ["length"]) and calls == [] and content
        assert final is None or final.choices[0].message.tool_calls in (None, [])
        return
    msg = final.choices[0].message
    assert finishes == ["tool_calls"] and final.choices[0].finish_reason == "tool_calls", [
        (c.model_dump(exclude_none=True)["choices"], c.model_extra) for c in chunks
    ]
    names = {"set_valve"} if isinstance(choice, dict) else set(SCHEMAS)
    check_calls(msg.tool_calls, rid, names)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    for i, call in enumerate(msg.tool_calls or []):
        mine = [d for d in deltas if d.index == i]
        opening, rest = mine[0], mine[1:]
        assert (opening.id, opening.type, opening.function and opening.function.name) == (
            call.id, "function", call.function.name,
        )  # fmt: skip
        assert all(d.id is None and d.type is None and d.function and d.function.name is None for d in rest)
        assert "".join((d.function and d.function.arguments) or "" for d in mine) == call.function.arguments
        assert call.function.parsed_arguments == valid_call(call.function.name, call.function.arguments)


def test_a_tool_result_sent_back_gets_an_answer(model: str, client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=model, **ask(tool_choice="required", parallel_tool_calls=False))
    call = (first.choices[0].message.tool_calls or [])[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),  # as a client sends it back
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True, "value": 3})},
    ]
    for choice in ("none", "auto"):
        resp = client.chat.completions.create(model=model, **ask(messages=history, tool_choice=choice))
        c = resp.choices[0]
        if c.finish_reason == "tool_calls":  # auto: the model may call again, a valid call
            for tc in c.message.tool_calls or []:
                valid_call(tc.function.name, tc.function.arguments)
        else:
            assert c.message.content and not MARKUP.search(c.message.content)
            assert c.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "set valve"}}]}, "tools[0].function.name"),
        ({"tools": [TOOLS[0], {"type": "function", "function": {"name": "x", "parameters": {"type": "array"}}}]},
         "tools[1].function.parameters.type"),
        ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {"a": {"type": "strang"}}}}}]},
         "tools[0].function.parameters.properties.a.type"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "stop_plant"}}},
         "tool_choice.function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [TOOLS[0]["function"]]}, "functions"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_naming_it(site: Site, client: openai.OpenAI, kw: dict[str, Any],
                                                   param: str) -> None:  # fmt: skip
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=default_model(site), messages=ASK, max_tokens=4, extra_body=kw)
    assert bad.value.param == param and bad.value.code == "invalid_request"
    assert param.split(".")[0].split("[")[0] in bad.value.message
    assert client.chat.completions.create(
        model=default_model(site), messages=ASK, max_tokens=2
    ).choices  # still serving


def test_legacy_completions_refuse_tools(site: Site) -> None:
    body = {"model": default_model(site), "prompt": "Close valve 3.", "max_tokens": 4, "tools": TOOLS}
    status, err, _ = curl(site, "/v1/completions", json.dumps(body))
    assert status == 400 and err["error"]["param"] == "tools" and "chat" in err["error"]["message"]


def test_the_grpc_front_door_passes_tools_through(site: Site) -> None:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in ASK],
        tools=[pb.Tool(name="read_sensor", description="Read a sensor.", parameters_json=json.dumps(READING))],
        tool_choice=pb.ToolChoice(mode="function", function="read_sensor"),
        parallel_tool_calls=False,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    chunks = list(
        site.stub.Generate(req, timeout=120, metadata=[("x-request-id", "grpctools0001"), ("x-edgefleet-node", "fd-a")])
    )
    assert chunks[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    deltas = [d for c in chunks for d in c.tool_calls]
    assert {d.index for d in deltas} == {0} and deltas[0].id == "call_grpctools000_0"
    assert deltas[0].name == "read_sensor" and all(not d.id for d in deltas[1:])
    valid_call("read_sensor", "".join(d.arguments for d in deltas))
    assert not MARKUP.search("".join(c.text for c in chunks))


def test_a_base_model_refuses_chat_with_tools_clearly(site: Site, client: openai.OpenAI) -> None:
    node = site.start_node("fd-gemma", EDGEFLEET_MODEL="gemma-3-270m")
    try:
        site.wait_routable("fd-gemma", timeout=60)
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="gemma-3-270m", **ask(tool_choice="required"))
        assert "has no chat template" in str(e.value) and "raw prompt" in str(e.value)
    finally:
        node.stop()
        del site.nodes["fd-gemma"]
        assert wait_for(lambda: "gemma-3-270m" not in site.serving(), timeout=30), site.serving()
