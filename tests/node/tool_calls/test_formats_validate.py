"""The prompt formats (native, generic) and the checks that refuse what cannot be honoured."""

from __future__ import annotations

import json

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edgefleet.node.errors import InvalidRequest
from edgefleet.node.service_types import ChatTurn
from edgefleet.node.tool_calls import formats
from edgefleet.node.tool_calls.types import ToolCall, ToolChoice, ToolDef, call_id
from edgefleet.node.tool_calls.validate import check_messages, check_tools

WEATHER = ToolDef("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
CALL = ToolCall("call_abc_0", "get_weather", '{"city": "Paris"}')
TURNS = [
    ChatTurn("system", "Be brief."),
    ChatTurn("user", "Weather in Paris?"),
    ChatTurn("assistant", "", tool_calls=(CALL,)),
    ChatTurn("tool", '{"temperature_c": 21}', tool_call_id="call_abc_0"),
]


def test_the_generic_format_tells_calls_in_words_and_results_as_user_turns() -> None:
    system = formats.tools_text([WEATHER], ToolChoice("auto"))
    msgs = formats.generic_messages(TURNS, system)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("Be brief.\n\n") and "<tool_call>" in msgs[0]["content"]
    assert json.loads(msgs[0]["content"].split("<tools>\n")[1].split("\n</tools>")[0])["name"] == "get_weather"
    assert msgs[2]["content"] == 'I called get_weather with {"city": "Paris"}.'
    assert msgs[3]["content"] == 'Result of get_weather (call_abc_0): {"temperature_c": 21}'


def test_with_tool_choice_none_the_generic_text_does_not_describe_the_markup() -> None:
    text = formats.tools_text([WEATHER], ToolChoice("none"))
    assert "get_weather" in text and "<tool_call>" not in text


def test_the_native_format_gives_the_template_openai_shaped_calls_and_tools() -> None:
    template = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}"
        "{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}|{% endfor %}"
        "{% for t in tools or [] %}<{{ t.function.name }}>{% endfor %}"
    )
    assert formats.is_native("... <tool_call> ...") and not formats.is_native(template)
    chat = Jinja2ChatFormatter(template, eos_token="", bos_token="", add_generation_prompt=False)
    out = chat(messages=formats.native_messages(TURNS), tools=formats.openai_tools([WEATHER])).prompt  # type: ignore[arg-type]
    assert out == (
        'system:Be brief.|user:Weather in Paris?|assistant:[get_weather {"city": "Paris"}]|'
        'tool:{"temperature_c": 21}(call_abc_0)|<get_weather>'
    )


def test_a_raw_prompt_gets_the_tools_first() -> None:
    assert formats.raw_prompt("Q", [WEATHER], ToolChoice("auto")).endswith("\n\nQ")
    assert formats.raw_prompt("Q", [], ToolChoice("auto")) == "Q"


def test_call_ids_are_stable_and_made_of_the_request_id() -> None:
    assert call_id("3f2a-11ee-b4c9-0242ac120002", 1) == "call_3f2a11eeb4c9_1"
    assert call_id("---", 0) == "call_0_0"


def _tool(name: str = "t", parameters: dict | None = None) -> ToolDef:  # type: ignore[type-arg]
    return ToolDef(name, "", {"type": "object", "properties": {}} if parameters is None else parameters)


@pytest.mark.parametrize(
    ("tools", "choice", "schema", "field"),
    [
        ([_tool("a b")], None, "", "tools[0].function.name"),
        ([_tool("x" * 65)], None, "", "tools[0].function.name"),
        ([_tool(), _tool("t")], None, "", "tools[1].function.name"),
        ([_tool(), _tool("u", {"type": "array"})], None, "", "tools[1].function.parameters must be an object"),
        ([_tool("u", {"type": "object", "minProperties": "x"})], None, "", "tools[0].function.parameters is not"),
        ([_tool(f"t{i}") for i in range(33)], None, "", "at most 32"),
        ([_tool()], ToolChoice("function", "other"), "", "tool_choice.function"),
        ([_tool()], ToolChoice("required", "t"), "", "tool_choice.function is only"),
        ([_tool()], ToolChoice("maybe"), "", "tool_choice.mode"),
        ([], ToolChoice("auto"), "", "tool_choice needs tools"),
        ([_tool()], None, '{"type": "object"}', "json_schema and tools"),
    ],
)
def test_tools_that_cannot_be_honoured_are_refused_naming_the_field(tools, choice, schema, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest) as e:
        check_tools(tools, choice, schema, False)
    assert field in str(e.value)


def test_the_choice_in_effect() -> None:
    assert check_tools([_tool()], None, "", False) == ToolChoice("auto")
    assert check_tools([], None, "", False) == ToolChoice("none")
    assert check_tools([ToolDef("t", "", {})], None, "", False).mode == "auto"
    with pytest.raises(InvalidRequest, match="tools_unconstrained needs tools"):
        check_tools([], None, "", True)


@pytest.mark.parametrize(
    ("turns", "field"),
    [
        ([ChatTurn("tool", "3", tool_call_id="call_x")], "messages[0].tool_call_id"),
        ([ChatTurn("tool", "3")], "messages[0].tool_call_id is empty"),
        ([ChatTurn("user", "q", tool_calls=(CALL,))], "messages[0].tool_calls"),
        ([ChatTurn("user", "q", tool_call_id="call_abc_0")], "messages[0].tool_call_id is only"),
        ([ChatTurn("assistant", "", tool_calls=(ToolCall("", "f", "{}"),))], "messages[0].tool_calls[0].id"),
        ([ChatTurn("assistant", "", tool_calls=(ToolCall("i", "f", "[1]"),))], "messages[0].tool_calls[0].arguments"),
        ([ChatTurn("assistant", "", tool_calls=(ToolCall("i", "f", "{x"),))], "messages[0].tool_calls[0].arguments"),
        ([*TURNS[:3], ChatTurn("tool", "3", tool_call_id="call_abc_0", name="other")], "messages[3].name"),
    ],
)
def test_messages_that_do_not_fit_together_are_refused_naming_the_field(turns, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest) as e:
        check_messages(turns)
    assert field in str(e.value)


def test_a_tool_message_answering_an_earlier_call_is_fine() -> None:
    check_messages(TURNS)
