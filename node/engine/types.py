"""Typed requests and events of the engine. Nothing here knows of gRPC, MQTT or SQLite."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from edgefleet.node.errors import EdgefleetError


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    TOOL_CALLS = "tool_calls"  # the answer is one or more tool calls (set by the tool-call parser)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF, built from a JSON schema by the caller
    # Lazy grammar (tool calls with tool_choice auto): free text until a trigger token is sampled or
    # the text matches a trigger pattern (the grammar applies from the pattern's first group on).
    grammar_lazy: bool = False
    trigger_tokens: tuple[int, ...] = ()
    trigger_patterns: tuple[str, ...] = ()
    banned_tokens: tuple[int, ...] = ()  # never sampled (logit bias -inf)
    text_tokens: tuple[int, ...] = ()  # special tokens that come out as their text (tool-call markup)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    queue_ms: float
    time_to_first_token_ms: float
    tokens_per_second: float
    total_ms: float


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of tool call `index`: the first carries its id and name, the next more arguments text."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage
    text_tail: str = ""  # text held back for stop-string matching and released at the end


@dataclass(frozen=True)
class Failed:
    error: EdgefleetError


Event = TextDelta | ToolCallDelta | Finished | Failed
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class AdapterUse:
    """A loaded LoRA adapter as one request uses it: pinned to the version it started with."""

    name: str
    version: str
    scale: float
    handle: Any  # owned by the engine's adapter table; opaque here

    @property
    def group(self) -> str:
        """Sequences decode together only with the same adapter at the same scale."""
        return f"{self.name}@{self.version}*{self.scale:g}"


@dataclass
class GenerationRequest:
    """One generation: prompt tokens in, events out through `sink` (called on the engine thread)."""

    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    sink: EventSink
    adapter: AdapterUse | None = None
    arrived: float = field(default_factory=time.monotonic)
    # Leading prompt tokens that stay the same from request to request (chat preamble, a template's
    # system prompt and head): their KV cells are worth keeping in the prefix store. 0: none.
    prefix_len: int = 0
    prefix_source: str = ""  # `template:name@version` when a template made the prefix (pruned when it changes)


class EngineObserver(Protocol):
    """What the engine tells a metrics collector, on the engine thread (keep it quick)."""

    def token_gap(self, seconds: float) -> None: ...

    def finished(self, reason: FinishReason, usage: Usage) -> None: ...

    def speculated(self, drafted: int, accepted: int) -> None:
        """One sequence's draft was verified: `accepted` of `drafted` draft tokens were kept."""
