"""The tool-calling evaluation set (bench/tool_tasks.json) and how one answer is scored.

A task is one plant-floor request that needs one call of one site tool. An answer is scored on
four counts, each of which implies the one before where it says so:
- call: the answer made at least one tool call;
- valid: it made calls, and every one names a given tool and has arguments that parse as a JSON
  object and validate against that tool's schema (checked here, independently of the server);
- right tool: the first call names the task's tool;
- right arguments: right tool, valid, and the arguments match: `exact` ones equal (ids, enums,
  booleans), `number` ones within [target, tolerance], `text` ones containing one of the strings
  (case-insensitive). Arguments the task does not name are not scored.
- shape: what OpenAI clients rely on: with calls, `finish_reason` "tool_calls" and an id on each
  call, ids distinct; without, no `<tool_call>` markup in the content and another finish reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

TASKS_FILE = Path(__file__).resolve().parent / "tool_tasks.json"
MIN_TASKS = 30


@dataclass(frozen=True)
class Task:
    id: str
    user: str
    tool: str
    exact: dict[str, Any]
    number: dict[str, tuple[float, float]]
    text: dict[str, list[str]]


@dataclass(frozen=True)
class TaskSet:
    system: str
    tools: list[dict[str, Any]]  # {name, kind, description, parameters}
    tasks: list[Task]

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI's `tools` request field."""
        return [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"], "parameters": t["parameters"]},
            }
            for t in self.tools
        ]

    def schema(self, name: str) -> dict[str, Any] | None:
        return next((t["parameters"] for t in self.tools if t["name"] == name), None)


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Score:
    call: bool
    valid: bool
    right_tool: bool
    right_args: bool
    shape: bool


def _task(raw: dict[str, Any]) -> Task:
    number = {k: (float(v[0]), float(v[1])) for k, v in raw.get("number", {}).items()}
    return Task(raw["id"], raw["user"], raw["tool"], dict(raw.get("exact", {})), number, dict(raw.get("text", {})))


def load_tasks(path: Path = TASKS_FILE) -> TaskSet:
    """Read the set and check that it is consistent; ValueError naming the task and field otherwise."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    tools = doc["tools"]
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: tool names repeat: {names}")
    for t in tools:
        jsonschema.Draft202012Validator.check_schema(t["parameters"])
    ts = TaskSet(doc["system"], tools, [_task(raw) for raw in doc["tasks"]])
    ids = [t.id for t in ts.tasks]
    if len(set(ids)) != len(ids) or len(ids) < MIN_TASKS:
        raise ValueError(f"{path}: needs at least {MIN_TASKS} tasks with distinct ids, has {len(ids)}")
    for task in ts.tasks:
        schema = ts.schema(task.tool)
        if schema is None:
            raise ValueError(f"{path}: task {task.id}: tool {task.tool!r} is not among the tools {names}")
        props = schema.get("properties", {})
        for field, value in [*task.exact.items(), *((k, v[0]) for k, v in task.number.items())]:
            if field not in props:
                raise ValueError(f"{path}: task {task.id}: {field!r} is no argument of {task.tool}")
            jsonschema.validate(value, props[field])  # the expected answer is one the tool accepts
        for field in task.text:
            if field not in props:
                raise ValueError(f"{path}: task {task.id}: {field!r} is no argument of {task.tool}")
    return ts


def parsed_arguments(ts: TaskSet, call: Call) -> dict[str, Any] | None:
    """The call's arguments when they parse as an object and validate against its tool's schema."""
    schema = ts.schema(call.name)
    if schema is None:
        return None
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        return None
    if not isinstance(args, dict):
        return None
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError:
        return None
    return args


def arguments_match(task: Task, args: dict[str, Any]) -> bool:
    for field, want in task.exact.items():
        if field not in args or args[field] != want or type(args[field]) is not type(want):
            return False
    for field, (target, tolerance) in task.number.items():
        got = args.get(field)
        if isinstance(got, bool) or not isinstance(got, int | float) or abs(got - target) > tolerance:
            return False
    for field, options in task.text.items():
        got = args.get(field)
        if not isinstance(got, str) or not any(o.lower() in got.lower() for o in options):
            return False
    return True


def score(ts: TaskSet, task: Task, calls: list[Call], finish_reason: str | None, content: str) -> Score:
    parsed = [parsed_arguments(ts, c) for c in calls]
    valid = bool(calls) and all(p is not None for p in parsed)
    right_tool = bool(calls) and calls[0].name == task.tool
    first = parsed[0] if parsed else None
    right_args = right_tool and valid and first is not None and arguments_match(task, first)
    ids = [c.id for c in calls]
    if calls:
        shape = finish_reason == "tool_calls" and all(ids) and len(set(ids)) == len(ids)
    else:
        shape = finish_reason != "tool_calls" and "<tool_call>" not in content
    return Score(bool(calls), valid, right_tool, right_args, shape)
