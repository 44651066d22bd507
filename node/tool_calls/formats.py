"""How tools and calls go into a prompt: the model family's own format, or a generic one.

Native: a chat template that knows `<tool_call>` (Qwen 2.5) renders the tools itself (`tools` as
OpenAI's `[{"type": "function", "function": {...}}]`), assistant messages with their `tool_calls`
and `tool` messages as it was trained to. Generic (SmolLM2, base models without a chat template):
a system text describes the tools and asks for the same markup,

    <tool_call>
    {"name": "<tool>", "arguments": {...}}
    </tool_call>

an assistant's earlier call is told in words ("I called <name> with <arguments>."), and a tool
result becomes a user turn "Result of <name> (<id>): …", which any template accepts. Earlier calls
are not written as markup: measured with SmolLM2-135M (greedy), a conversation whose history shows
the markup gets the same call again instead of an answer, with tool_choice auto and none alike,
and with the call told in words it answers from the result. With tool_choice none the generic
text describes the tools but not the markup, for a native template too: given the tools, Qwen's
template asks for calls, and with its call token banned Qwen2.5-Coder writes the call as a ```json
block in the content instead (measured); told of the tools without the markup, it answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgefleet.node.tool_calls.types import CALL_CLOSE, CALL_OPEN, ToolCall, ToolChoice, ToolDef, Turn


def is_native(chat_template: str | None) -> bool:
    """The chat template has its own tool-call format (`<tool_call>`)."""
    return bool(chat_template) and CALL_OPEN in (chat_template or "")


def openai_tools(tools: Sequence[ToolDef]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters or _EMPTY},
        }
        for t in tools
    ]


_EMPTY: dict[str, Any] = {"type": "object", "properties": {}}


def _args(call: ToolCall) -> Any:
    return json.loads(call.arguments) if call.arguments.strip() else {}


def call_words(call: ToolCall) -> str:
    args = json.dumps(_args(call), ensure_ascii=False)
    return f"I called {call.name} with {args}."


def tools_text(tools: Sequence[ToolDef], choice: ToolChoice) -> str:
    """The generic format's description of the tools (a system text)."""
    listing = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters or _EMPTY}, ensure_ascii=False
        )
        for t in tools
    )
    head = f"You have these tools (functions), each given as JSON:\n<tools>\n{listing}\n</tools>\n"
    if choice.mode == "none":
        return head + "Do not call any tool now: answer the user in plain text."
    how = (
        f"To call a tool, answer with\n{CALL_OPEN}\n"
        '{"name": "<tool name>", "arguments": {<the arguments as JSON>}}\n'
        f"{CALL_CLOSE}\n"
    )
    if choice.mode == "function":
        return head + how + f"Call the tool {choice.function} now."
    if choice.mode == "required":
        return head + how + "Call the tool that fits the request now."
    return head + how + "Call a tool when it helps; otherwise answer the user directly."


def native_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """Messages as a tool-aware chat template reads them (OpenAI's shape, arguments as objects)."""
    out: list[dict[str, Any]] = []
    for t in turns:
        m: dict[str, Any] = {"role": t.role, "content": t.content}
        if t.tool_calls:
            m["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _args(c)}}
                for c in t.tool_calls
            ]
        if t.role == "tool":
            m["tool_call_id"] = t.tool_call_id
            if t.name:
                m["name"] = t.name
        out.append(m)
    return out


def generic_messages(turns: Sequence[Turn], system: str) -> list[dict[str, Any]]:
    """Messages for a template without tool support: calls as markup text, results as user turns."""
    names = {c.id: c.name for t in turns for c in t.tool_calls}
    out: list[dict[str, Any]] = []
    for t in turns:
        if t.role == "tool":
            name = t.name or names.get(t.tool_call_id, "the tool")
            out.append({"role": "user", "content": f"Result of {name} ({t.tool_call_id}): {t.content}"})
        elif t.tool_calls:
            parts = [t.content] if t.content.strip() else []
            parts.extend(call_words(c) for c in t.tool_calls)
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append({"role": t.role, "content": t.content})
    return with_system(out, system)


def with_system(messages: list[dict[str, Any]], system: str) -> list[dict[str, Any]]:
    """`system` added to the first system message, or as one before the others."""
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{system}"}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def raw_prompt(prompt: str, tools: Sequence[ToolDef], choice: ToolChoice) -> str:
    """A base model's raw prompt with the tools described first."""
    return f"{tools_text(tools, choice)}\n\n{prompt}" if tools else prompt
