"""One model turn for in-process callers (the agent loop): a GenerateInput in, content and calls out.

`run_turn` queues the request like any edge, waits for it on the caller's thread and raises the
node's typed errors (InvalidRequest, QueueFull, EngineFailure, …); past `timeout_s` it cancels the
generation and raises DeadlineExceeded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.node.engine.types import Event, Failed, Finished, FinishReason, TextDelta, ToolCallDelta, Usage
from edgefleet.node.errors import EdgefleetError
from edgefleet.node.tool_calls.types import ToolCall
from edgefleet.proto.error_codes import ErrorCode

if TYPE_CHECKING:
    from edgefleet.node.service import NodeService
    from edgefleet.node.service_types import GenerateInput


class DeadlineExceeded(EdgefleetError):
    """The turn did not finish within its time; the generation was cancelled."""

    code = ErrorCode.DEADLINE_EXCEEDED


@dataclass
class TurnResult:
    content: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage


@dataclass
class _Collector:
    """The sink: gathers the events of one request (engine thread) for the waiting caller."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments]
    finished: Finished | None = None
    failed: Failed | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            c = self.calls.setdefault(event.index, ["", "", ""])
            c[0] = c[0] or event.id
            c[1] = c[1] or event.name
            c[2] += event.arguments
        elif isinstance(event, Finished):
            self.text.append(event.text_tail)
            self.finished = event
            self.done.set()
        else:
            self.failed = event
            self.done.set()


def run_turn(service: NodeService, inp: GenerateInput, request_id: str, timeout_s: float) -> TurnResult:
    """Generate one answer (blocking): its content, its tool calls and why it finished."""
    sink = _Collector()
    service.generate_queued(inp, request_id, sink, time.monotonic())
    if not sink.done.wait(timeout_s):
        service.cancel(request_id)
        sink.done.wait(5.0)
        raise DeadlineExceeded(f"the model's turn took longer than {timeout_s:g} s and was cancelled")
    if sink.failed is not None:
        raise sink.failed.error
    assert sink.finished is not None
    calls = [ToolCall(*sink.calls[i]) for i in sorted(sink.calls)]
    return TurnResult("".join(sink.text), calls, sink.finished.reason, sink.finished.usage)
