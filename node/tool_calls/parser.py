"""Generated text in, content and tool calls out, as the text streams (pure: no model, no I/O).

Text that could still be the start of `<tool_call>` is held back (as stop strings are), so the
markup never reaches the content. Each call is taken whole when `</tool_call>` closes it, parsed
and validated against its tool's schema; a valid call goes out as two ToolCallDelta events — the
opening one with index, id and name, then one with the arguments — so concatenated `arguments`
are the call's JSON text. Whitespace between text and a call, or between calls, is dropped.

`bare` (tool_choice auto): an answer that starts with `{` or a ```json block may be one call
written without the markup (Qwen2.5-Coder does that); it is held back to the end, and is one call
if it parses and validates as one, else it goes on as text.

A call that repeats an earlier one of the same answer exactly (name and arguments) is left out:
small models loop on a call (SmolLM2 writes the same call until max_tokens), and the same call
twice asks for nothing more. It is listed in `rejected`.

A call that is not valid JSON, names no tool, or whose arguments do not validate is not a call:
unconstrained (tools_unconstrained) it is returned as the text the model wrote; enforced, where
the grammar makes that impossible except for schema keywords a grammar cannot express (minimum,
uniqueItems, …) or an answer cut short by max_tokens, it is dropped and listed in `rejected`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema

from edgefleet.node.engine.types import FinishReason, TextDelta, ToolCallDelta
from edgefleet.node.tool_calls.grammar import object_schema
from edgefleet.node.tool_calls.types import CALL_CLOSE, CALL_OPEN, ToolCall, ToolDef, call_id

Out = TextDelta | ToolCallDelta


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is the start of `marker` (not all of it)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ToolCallParser:
    def __init__(
        self,
        tools: Sequence[ToolDef],
        request_id: str,
        *,
        enforced: bool = True,
        max_calls: int = 8,
        bare: bool = False,
    ) -> None:
        self._validators = {t.name: jsonschema.Draft202012Validator(object_schema(t.parameters)) for t in tools}
        self._request_id = request_id
        self._enforced = enforced
        self._max_calls = max_calls
        self._buf = ""
        self._ws = ""  # whitespace after the last content, emitted only if more content follows
        self._in_call = False
        self._bare = bare  # still at the start of the answer, where a bare call may begin
        self._held_bare = False
        self._text_after_call = False  # the answer so far may be a bare call: all of it is held
        self.calls: list[ToolCall] = []
        self.rejected: list[str] = []  # why each call that was not one was refused

    def feed(self, text: str) -> list[Out]:
        self._buf += text
        out: list[Out] = []
        if self._bare and self._may_be_bare():
            return out
        while True:
            if self._in_call:
                end = self._buf.find(CALL_CLOSE)
                if end < 0:
                    return out
                body, self._buf = self._buf[:end], self._buf[end + len(CALL_CLOSE) :]
                self._in_call = False
                out.extend(self._call(body))
                continue
            start = self._buf.find(CALL_OPEN)
            if start >= 0:
                self._content(self._buf[:start], out)
                self._ws = ""  # whitespace before a call is not content
                self._buf = self._buf[start + len(CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, CALL_OPEN)
            cut = len(self._buf) - keep
            self._content(self._buf[:cut], out)
            self._buf = self._buf[cut:]
            return out

    def _may_be_bare(self) -> bool:
        """At the answer's start: True while what came so far could still be a bare call (hold it)."""
        head = self._buf.lstrip()
        if self._held_bare or head.startswith(("{", "```json")):
            self._held_bare = True
            return True
        if not head or "```json".startswith(head):
            return True  # not decided yet
        self._bare = False
        return False

    def finish(self, tail: str, reason: FinishReason) -> tuple[list[Out], FinishReason]:
        """The end of generation: what is left, and the finish reason.

        TOOL_CALLS when calls were made and the answer ended (STOP), or, enforced, when max_tokens
        ended an answer of calls only: a call cut short is left out and the answer is the calls
        before it, complete (a small model that keeps calling runs into max_tokens that way)."""
        out = self.feed(tail)
        if self._bare:
            self._bare = False
            body = self._buf.strip().removeprefix("```json").removesuffix("```").strip()
            parsed, _ = self._parse(body) if body.startswith("{") else (None, "")
            if parsed is not None:
                self._buf = ""
                out.extend(self._emit(*parsed))
            else:
                out.extend(self.feed(""))
        if self._in_call:
            self._refuse(CALL_OPEN + self._buf, "the call was not closed (cut short?)", out)
        elif self._enforced and self.calls and self._buf.strip() and CALL_OPEN.startswith(self._buf.strip()):
            self.rejected.append("a further call was cut short in its markup")  # markup, not content
        elif self._buf:
            self._content(self._buf, out)
        self._buf = ""
        self._in_call = False
        if self._ws and not self.calls:
            out.append(TextDelta(self._ws))
        self._ws = ""
        only_calls = self._enforced and not self._text_after_call
        if self.calls and (reason is FinishReason.STOP or (reason is FinishReason.LENGTH and only_calls)):
            reason = FinishReason.TOOL_CALLS
        return out, reason

    def _content(self, text: str, out: list[Out]) -> None:
        if not text:
            return
        stripped = text.rstrip()
        if not stripped:
            self._ws += text
            return
        out.append(TextDelta(self._ws + stripped))
        self._text_after_call = self._text_after_call or bool(self.calls)
        self._ws = text[len(stripped) :]

    def _call(self, body: str) -> list[Out]:
        out: list[Out] = []
        parsed, why = self._parse(body)
        if parsed is None:
            self._refuse(f"{CALL_OPEN}{body}{CALL_CLOSE}", why, out)
            return out
        return self._emit(*parsed)

    def _emit(self, name: str, args: dict[str, Any]) -> list[Out]:
        out: list[Out] = []
        index = len(self.calls)
        arguments = json.dumps(args, ensure_ascii=False)
        if any(c.name == name and c.arguments == arguments for c in self.calls):
            self.rejected.append(f"repeats an earlier call of {name} with the same arguments")
            return out
        call = ToolCall(call_id(self._request_id, index), name, arguments)
        self.calls.append(call)
        out.append(ToolCallDelta(index, call.id, name, ""))
        out.append(ToolCallDelta(index, "", "", call.arguments))
        return out

    def _parse(self, body: str) -> tuple[tuple[str, dict[str, Any]] | None, str]:
        try:
            obj = json.loads(body)
        except ValueError as e:
            return None, f"not JSON: {e}"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None, "not an object with a name"
        name = obj["name"]
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None, "arguments are not JSON"
        if not isinstance(args, dict):
            return None, "arguments are not an object"
        validator = self._validators.get(name)
        if validator is None:
            return None, f"no tool is named {name!r}"
        if len(self.calls) >= self._max_calls:
            return None, f"more than {self._max_calls} call(s)"
        error = jsonschema.exceptions.best_match(validator.iter_errors(args))
        if error is not None:
            return None, f"arguments do not validate: {error.message}"
        return (name, args), ""

    def _refuse(self, text: str, why: str, out: list[Out]) -> None:
        self.rejected.append(why)
        if not self._enforced:
            out.append(TextDelta(self._ws + text))
            self._ws = ""
