"""A turn that only repeats earlier calls is recognised, so the loop asks the model for its answer."""

from __future__ import annotations

from typing import Any

from edgefleet.node.agents import conversation as conv
from edgefleet.node.tool_calls.types import ToolCall


def _history() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "goal"},
        conv.assistant("", [ToolCall("call_a_0", "read_sensor", '{"machine": "m1"}')]),
        conv.tool_result("call_a_0", "read_sensor", "91.5 C"),
    ]


def test_the_same_call_with_the_same_arguments_is_a_repeat_whatever_the_spacing() -> None:
    assert conv.repeats(_history(), [ToolCall("call_b_0", "read_sensor", '{ "machine":"m1" }')])


def test_other_arguments_another_tool_or_no_call_are_not_repeats() -> None:
    history = _history()
    assert not conv.repeats(history, [ToolCall("c", "read_sensor", '{"machine": "m2"}')])
    assert not conv.repeats(history, [ToolCall("c", "open_ticket", '{"machine": "m1"}')])
    assert not conv.repeats(history, [])
    mixed = [ToolCall("c", "read_sensor", '{"machine": "m1"}'), ToolCall("d", "open_ticket", "{}")]
    assert not conv.repeats(history, mixed)
