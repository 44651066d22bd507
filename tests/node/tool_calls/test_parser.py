"""The stream parser: text deltas in, content and calls out, markup never in the content."""

from __future__ import annotations

import json

import pytest

from edgefleet.node.engine.types import FinishReason, TextDelta, ToolCallDelta
from edgefleet.node.tool_calls.parser import ToolCallParser
from edgefleet.node.tool_calls.types import ToolDef

WEATHER = ToolDef(
    "get_weather",
    "Weather",
    {"type": "object", "properties": {"city": {"type": "string", "minLength": 2}}, "required": ["city"]},
)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def run(pieces: list[str], **kw: object) -> tuple[str, list[ToolCallDelta], FinishReason, ToolCallParser]:
    parser = ToolCallParser([WEATHER], "req-1234-abcd-5678-ef", **kw)  # type: ignore[arg-type]
    out = []
    for p in pieces:
        out.extend(parser.feed(p))
    rest, reason = parser.finish("", FinishReason.STOP)
    out.extend(rest)
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    return text, [e for e in out if isinstance(e, ToolCallDelta)], reason, parser


def chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.parametrize("split", [lambda t: [t], chars], ids=["whole", "char-by-char"])
def test_a_call_becomes_an_opening_delta_and_its_arguments(split) -> None:  # type: ignore[no-untyped-def]
    text, deltas, reason, parser = run(split("Let me check.\n" + CALL))
    assert text == "Let me check."
    assert reason is FinishReason.TOOL_CALLS
    assert deltas[0] == ToolCallDelta(0, "call_req1234abcd5_0", "get_weather", "")
    assert all(not d.id and not d.name and d.index == 0 for d in deltas[1:])
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    assert parser.calls[0].id == "call_req1234abcd5_0"


def test_a_call_repeated_exactly_is_left_out() -> None:
    _text, deltas, _reason, parser = run([CALL, "\n", CALL, "\n", CALL.replace("Paris", "Rome")])
    assert [json.loads(d.arguments)["city"] for d in deltas if not d.id] == ["Paris", "Rome"]
    assert [d.index for d in deltas if d.id] == [0, 1]
    assert parser.rejected == ["repeats an earlier call of get_weather with the same arguments"]


def test_parallel_calls_are_numbered_and_whitespace_between_them_is_not_content() -> None:
    text, deltas, reason, _ = run([CALL, "\n", CALL.replace("Paris", "Rome")])
    assert text == ""
    assert [d.index for d in deltas if d.id] == [0, 1]
    assert reason is FinishReason.TOOL_CALLS


def test_text_that_only_looks_like_the_start_of_markup_is_released() -> None:
    text, deltas, reason, _ = run(["a <tool", "box> and <b>"])
    assert text == "a <toolbox> and <b>" and deltas == [] and reason is FinishReason.STOP


def test_a_partial_marker_at_the_end_is_content() -> None:
    text, _, _, _ = run(["the end <tool_ca"])
    assert text == "the end <tool_ca"


def test_unconstrained_an_invalid_call_is_returned_as_text() -> None:
    bad = CALL.replace('"Paris"', '"P"')  # minLength 2
    text, deltas, reason, parser = run([bad], enforced=False)
    assert deltas == [] and text == bad and reason is FinishReason.STOP
    assert "do not validate" in parser.rejected[0]


@pytest.mark.parametrize(
    "body",
    ["not json", '{"name": "nope", "arguments": {}}', '{"name": "get_weather", "arguments": [1]}'],
)
def test_enforced_a_call_that_is_not_one_is_dropped_and_named(body: str) -> None:
    text, deltas, reason, parser = run([f"<tool_call>\n{body}\n</tool_call>"])
    assert text == "" and deltas == [] and reason is FinishReason.STOP
    assert len(parser.rejected) == 1


def test_a_call_cut_short_is_not_a_call() -> None:
    text, deltas, reason, parser = run(['<tool_call>\n{"name": "get_weather", "argu'])
    assert (text, deltas, reason) == ("", [], FinishReason.STOP)
    assert "not closed" in parser.rejected[0]
    loose, _, _, _ = run(['<tool_call>\n{"name"'], enforced=False)
    assert loose == '<tool_call>\n{"name"'


def test_more_calls_than_allowed_are_not_calls() -> None:
    _, deltas, _, parser = run([CALL, "\n", CALL.replace("Paris", "Rome")], max_calls=1)
    assert len([d for d in deltas if d.id]) == 1 and len(parser.rejected) == 1


def test_arguments_written_as_a_json_string_are_taken() -> None:
    body = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    _, deltas, _, _ = run([f"<tool_call>{body}</tool_call>"])
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Oslo"}


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```',
    ],
)
def test_bare_a_whole_answer_that_is_one_call_is_a_call(answer: str) -> None:
    text, deltas, reason, _ = run(chars(answer), bare=True)
    assert text == "" and reason is FinishReason.TOOL_CALLS
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}


@pytest.mark.parametrize(
    "answer", ['{"answer": 42}', "```json\n[1, 2]\n```", "```python\nprint(1)\n```", "Plain {text}"]
)
def test_bare_anything_else_is_content_unchanged(answer: str) -> None:
    text, deltas, reason, _ = run(chars(answer), bare=True)
    assert text == answer and deltas == [] and reason is FinishReason.STOP


def test_a_length_finish_of_an_answer_of_calls_only_is_tool_calls() -> None:
    for tail in ("", "\n", "\n<tool_ca"):
        parser = ToolCallParser([WEATHER], "r")
        parser.feed(CALL)
        out, reason = parser.finish(tail, FinishReason.LENGTH)
        assert reason is FinishReason.TOOL_CALLS and out == [], "an answer of calls only"
    parser = ToolCallParser([WEATHER], "r")
    parser.feed(CALL + "\n")
    _, reason = parser.finish('<tool_call>\n{"name": "get_w', FinishReason.LENGTH)
    assert reason is FinishReason.TOOL_CALLS and len(parser.calls) == 1
    loose = ToolCallParser([WEATHER], "r", enforced=False)
    loose.feed(CALL + "\n")
    _, reason = loose.finish('<tool_call>\n{"name": "get_w', FinishReason.LENGTH)
    assert reason is FinishReason.LENGTH, "unconstrained, the cut call is text: the answer was cut"
    plain = ToolCallParser([WEATHER], "r")
    plain.feed("Some text")
    _, reason = plain.finish("", FinishReason.LENGTH)
    assert reason is FinishReason.LENGTH
