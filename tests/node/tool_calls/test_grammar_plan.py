"""The call grammar and the engine plan: bounds, one branch per tool, triggers llama.cpp accepts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.sampler import Sampler
from edgefleet.node.errors import InvalidRequest
from edgefleet.node.model_catalog import resolve_model
from edgefleet.node.tool_calls.grammar import STRING_MAX_CHARS, bounded, call_grammar
from edgefleet.node.tool_calls.plan import TRIGGER_PATTERN, bare_trigger, plan
from edgefleet.node.tool_calls.types import ToolChoice, ToolDef

WEATHER = ToolDef("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})
TICKET = ToolDef(
    "open_ticket",
    "",
    {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 40}, "tags": {"type": "array", "items": {}}},
        "required": ["title"],
    },
)


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    model = LoadedModel(resolve_model("smollm2-135m-instruct", tmp_path_factory.mktemp("m")).path)
    yield model
    model.close()


def test_strings_and_arrays_get_bounds_and_what_is_bounded_stays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "string", "maxLength": 5},
            "c": {"type": "string", "enum": ["x"]},
            "d": {"type": "array", "items": {"type": "string"}},
            "e": {"type": ["string", "null"], "minLength": 500},
            "type": {"type": "string"},  # a property named `type` is not a type
        },
    }
    out = bounded(schema)
    p = out["properties"]
    assert p["a"]["maxLength"] == STRING_MAX_CHARS and p["b"]["maxLength"] == 5 and "maxLength" not in p["c"]
    assert p["d"]["maxItems"] == 16 and p["d"]["items"]["maxLength"] == STRING_MAX_CHARS
    assert [b["type"] for b in p["e"]["anyOf"]] == ["string", "null"] and p["e"]["anyOf"][0]["maxLength"] == 500
    assert p["type"]["maxLength"] == STRING_MAX_CHARS
    assert "maxLength" not in schema["properties"]["a"], "the caller's schema is not changed"


def test_one_branch_per_tool_and_only_the_named_one(smol: LoadedModel) -> None:
    both = call_grammar((WEATHER, TICKET), "", 8)
    assert '"\\"get_weather\\""' in both and '"\\"open_ticket\\""' in both
    assert "{0,7}" in both
    only = call_grammar((WEATHER, TICKET), "open_ticket", 1)
    assert "get_weather" not in only and "{0," not in only
    for grammar in (both, only, call_grammar((WEATHER, TICKET), "", 8, bare=True)):
        Sampler(smol, 0.0, 40, 0.95, 0, grammar).free()  # llama.cpp parses it


def test_a_schema_the_converter_cannot_express_is_refused_naming_the_tool() -> None:
    bad = ToolDef("x", "", {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(InvalidRequest, match=r"tools\[1\]\.function\.parameters"):
        call_grammar((WEATHER, bad))


def test_the_text_trigger_fires_only_where_the_grammar_goes_on() -> None:
    fire = ["x <tool_call>", "x <tool_call>\n", 'a<tool_call>\n{ "na', '<tool_call>\n{"name"']
    hold = ["<tool_call", "<tool_call> {", "<tool_call>\n{x", '<tool_call>\n{"name":', "<tool_call>,"]
    for text in fire:
        assert re.search(TRIGGER_PATTERN, text), text
    for text in hold:
        assert not re.search(TRIGGER_PATTERN, text), text


def test_the_bare_trigger_takes_a_whole_answer_up_to_a_tools_name() -> None:
    pattern = bare_trigger(["get_weather", "open_ticket"])
    assert pattern.startswith("^") and pattern.endswith("$")  # llama.cpp: matched against the whole text
    fire = [
        '{"name": "get_weather"',
        '```json\n{\n  "name": "open_ticket",\n  "',
        '{"name":"get_weather", "arguments": {',
    ]
    hold = ['{"name": "get_w', 'Sure: {"name": "get_weather"', '{"name": "other"', '{"name": "get_weather"}']
    for text in fire:
        m = re.fullmatch(pattern, text)
        assert m and text[m.start(1)] == "{", text
    for text in hold:
        assert not re.fullmatch(pattern, text), text


def test_the_plan_of_each_choice(smol: LoadedModel) -> None:
    tools = (WEATHER, TICKET)
    auto = plan(smol, tools, ToolChoice("auto"), True, False)
    assert auto.lazy and auto.grammar and len(auto.trigger_patterns) == 2 and auto.trigger_tokens == ()
    required = plan(smol, tools, ToolChoice("required"), False, False)
    assert not required.lazy and required.max_calls == 1 and required.grammar
    named = plan(smol, tools, ToolChoice("function", "open_ticket"), True, False)
    assert named.max_calls == 1 and "get_weather" not in (named.grammar or "")
    none = plan(smol, tools, ToolChoice("none"), True, False)
    assert none.grammar is None and not none.parses and none.banned_tokens == ()  # no call token in SmolLM2
    loose = plan(smol, tools, ToolChoice("auto"), True, True)
    assert loose.grammar is None and not loose.enforced and loose.parses
    for p in (auto, required, named, none):
        Sampler.for_params(smol, _params(p)).free()


def _params(p):  # type: ignore[no-untyped-def]
    from edgefleet.node.engine.types import SamplingParams

    return SamplingParams(
        temperature=0.0,
        grammar=p.grammar,
        grammar_lazy=p.lazy,
        trigger_tokens=p.trigger_tokens,
        trigger_patterns=p.trigger_patterns,
        banned_tokens=p.banned_tokens,
    )


def test_the_model_file_exists(smol: LoadedModel) -> None:
    assert Path(smol.path).exists() and smol.single_token("<tool_call>") is None
