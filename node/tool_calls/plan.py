"""What one request with tools needs from the engine: grammar, triggers, banned and shown tokens.

- `required`: the grammar from the first token: one call, or up to MAX_PARALLEL_CALLS (parallel).
- `function`: the same with only the named tool, one call.
- `auto`: a lazy grammar: the model writes text or starts a call, and from the call's start on the
  call is enforced. Triggers (as llama.cpp's server does for Qwen): the `<tool_call>` token where
  the vocabulary has one (Qwen), and the text `<tool_call>` (any model). llama.cpp applies the
  grammar from the pattern's group on and replays the token that completed it (a replay the
  grammar refuses aborts the process), so a pattern only fires when what that token carries after
  the markup is something the grammar accepts (a newline, `{`, the start of `"name"`).
  Qwen2.5-Coder often writes its call as bare JSON, or in a ```json block, instead: a second
  pattern fires when the whole answer so far is such an object up to a tool's name, and the
  grammar then takes one (pretty-printed) call object.
- `none`: no grammar and no parsing; the call token is banned (Qwen) and the generic format does not
  describe the markup.
- `tools_unconstrained` (evaluation): described and parsed, never enforced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from edgefleet.node.tool_calls.grammar import COMPACT_REGEX, MAX_PARALLEL_CALLS, SPACE_REGEX, call_grammar
from edgefleet.node.tool_calls.parser import ToolCallParser
from edgefleet.node.tool_calls.types import CALL_CLOSE, CALL_OPEN, ToolChoice, ToolDef

# The text trigger: `<tool_call>` then at most a prefix of what the grammar takes next (`\n{ "name"`,
# the space optional), to the end of the text: the token that completes the trigger is replayed
# into the grammar, and a replay the grammar refuses would abort llama.cpp.
_NEXT = (r"\n", r"\{", COMPACT_REGEX, '"', "n", "a", "m", "e", '"')
_AFTER_NAME = (",", SPACE_REGEX, '"', *"arguments", '"', SPACE_REGEX, ":", SPACE_REGEX, r"\{")


def _prefixes(atoms: tuple[str, ...]) -> str:
    """A regex matching any prefix of the sequence of `atoms`."""
    out = ""
    for atom in reversed(atoms):
        out = f"({atom}{out})?"
    return out


TRIGGER_PATTERN = f"({re.escape(CALL_OPEN)}){_prefixes(_NEXT)}$"


def bare_trigger(names: list[str]) -> str:
    """The whole answer so far is a call object without the markup (optionally in a ```json block),
    up to its tool's name and at most a prefix of what follows it: the grammar applies from `{`."""
    alternatives = "|".join(re.escape(n) for n in names)
    head = rf'\{{{SPACE_REGEX}"name"{SPACE_REGEX}:{SPACE_REGEX}"(?:{alternatives})"'
    return rf"^\s*(?:```(?:json)?\s*)?({head}{_prefixes(_AFTER_NAME)})$"


class Vocabulary(Protocol):
    def single_token(self, text: str) -> int | None: ...


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[ToolDef, ...]
    choice: ToolChoice
    max_calls: int
    enforced: bool
    grammar: str | None = None
    lazy: bool = False
    trigger_tokens: tuple[int, ...] = ()
    trigger_patterns: tuple[str, ...] = ()
    banned_tokens: tuple[int, ...] = ()
    text_tokens: tuple[int, ...] = ()

    @property
    def parses(self) -> bool:
        """Whether the answer is parsed for calls (not with tool_choice none)."""
        return self.choice.mode != "none"

    def parser(self, request_id: str) -> ToolCallParser:
        bare = self.choice.mode == "auto" or not self.enforced  # unconstrained, any model may write one
        return ToolCallParser(self.tools, request_id, enforced=self.enforced, max_calls=self.max_calls, bare=bare)


def plan(
    vocab: Vocabulary, tools: tuple[ToolDef, ...], choice: ToolChoice, parallel: bool, unconstrained: bool
) -> ToolPlan:
    """The engine settings for a checked request (validate.check_tools first)."""
    open_token = vocab.single_token(CALL_OPEN)
    close_token = vocab.single_token(CALL_CLOSE)
    shown = tuple(t for t in (open_token, close_token) if t is not None)
    mode = choice.mode
    max_calls = 1 if mode == "function" or not parallel else MAX_PARALLEL_CALLS
    if mode == "none":
        banned = (open_token,) if open_token is not None else ()
        return ToolPlan(tools, choice, 0, True, banned_tokens=banned, text_tokens=shown)
    if unconstrained:
        return ToolPlan(tools, choice, max_calls, False, text_tokens=shown)
    if mode in ("required", "function"):
        grammar = call_grammar(tools, choice.function if mode == "function" else "", max_calls)
        return ToolPlan(tools, choice, max_calls, True, grammar=grammar, text_tokens=shown)
    grammar = call_grammar(tools, "", max_calls, bare=True)
    return ToolPlan(
        tools,
        choice,
        max_calls,
        True,
        grammar=grammar,
        lazy=True,
        trigger_tokens=(open_token,) if open_token is not None else (),
        trigger_patterns=(TRIGGER_PATTERN, bare_trigger([t.name for t in tools])),
        text_tokens=shown,
    )
