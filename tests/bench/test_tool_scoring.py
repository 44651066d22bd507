"""The tool-calling evaluation set is consistent, and an answer is scored on what each column names."""

from __future__ import annotations

import json

from bench.tool_scoring import Call, load_tasks, score

TS = load_tasks()
TASK = next(t for t in TS.tasks if t.tool == "set_setpoint" and t.exact.get("machine") == "boiler-1")


def call(args: dict[str, object], name: str = "set_setpoint", cid: str = "call_abc_0") -> Call:
    return Call(cid, name, json.dumps(args))


def test_the_set_has_30_tasks_over_six_to_eight_tools_each_answerable() -> None:
    assert len(TS.tasks) >= 30 and 6 <= len(TS.tools) <= 8
    assert {t.tool for t in TS.tasks} == {t["name"] for t in TS.tools}  # every tool is asked for


def test_a_right_call_scores_on_every_count() -> None:
    good = {"machine": "boiler-1", "parameter": "temperature", "value": 185.2}
    got = score(TS, TASK, [call(good)], "tool_calls", "")
    assert (got.call, got.valid, got.right_tool, got.right_args, got.shape) == (True, True, True, True, True)


def test_each_count_fails_on_its_own_fault() -> None:
    base = {"machine": "boiler-1", "parameter": "temperature", "value": 185}
    off = score(TS, TASK, [call({**base, "value": 190})], "tool_calls", "")  # outside the tolerance
    assert (off.valid, off.right_tool, off.right_args) == (True, True, False)
    invalid = score(TS, TASK, [call({**base, "value": 9000})], "tool_calls", "")  # above the schema's maximum
    assert (invalid.call, invalid.valid, invalid.right_tool, invalid.right_args) == (True, False, True, False)
    wrong = score(TS, TASK, [call({"machine": "boiler-1", "reason": "hot"}, "stop_machine")], "tool_calls", "")
    assert (wrong.valid, wrong.right_tool) == (True, False)
    no_id = score(TS, TASK, [call(base, cid="")], "tool_calls", "")
    assert no_id.right_args and not no_id.shape
    text = score(TS, TASK, [], "stop", '<tool_call>{"name": "set_setpoint"}')
    assert not text.call and not text.valid and not text.shape  # markup leaking into content
    assert score(TS, TASK, [], "stop", "Done.").shape


def test_free_text_and_enum_arguments() -> None:
    ticket = next(t for t in TS.tasks if t.tool == "open_ticket" and t.exact["machine"] == "press-7")
    ok = {"machine": "press-7", "priority": "high", "summary": "Hydraulic oil LEAKING from the main cylinder"}
    assert score(TS, ticket, [call(ok, "open_ticket")], "tool_calls", "").right_args
    bad = score(TS, ticket, [call({**ok, "summary": "cylinder problem"}, "open_ticket")], "tool_calls", "")
    assert bad.valid and not bad.right_args
    enum = score(TS, ticket, [call({**ok, "priority": "High"}, "open_ticket")], "tool_calls", "")
    assert not enum.valid and not enum.right_args
