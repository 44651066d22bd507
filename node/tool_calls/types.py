"""What a request says about tools, and the calls an answer makes (node-internal, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The markup around one call, the same for every model family (Qwen's own, and the generic format).
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

MODES = ("auto", "none", "required", "function")


@dataclass(frozen=True)
class ToolDef:
    """A function the model may call: `parameters` is its arguments' JSON schema (an object schema)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class ToolCall:
    """One complete call: `arguments` is JSON text (an object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (text or calls), `none` (text only), `required` (at least one call), `function` (call `function`)."""

    mode: str = "auto"
    function: str = ""


def call_id(request_id: str, index: int) -> str:
    """`call_` + the first 12 letters and digits of the request id + `_` + the call's index: stable per request."""
    prefix = "".join(c for c in request_id if c.isascii() and c.isalnum())[:12] or "0"
    return f"call_{prefix}_{index}"


class Turn(Protocol):
    """A chat message with its tool fields, as the service holds it (service.ChatTurn)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]: ...

    @property
    def tool_call_id(self) -> str: ...

    @property
    def name(self) -> str: ...
