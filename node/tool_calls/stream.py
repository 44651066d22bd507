"""The sink between the engine and a request's edge: generated text through the tool-call parser.

The engine emits text; this emits content (TextDelta), ToolCallDelta events and a Finished whose
reason is TOOL_CALLS when the answer made calls. It runs on the engine thread, as any sink.
"""

from __future__ import annotations

import logging

from edgefleet.node.engine.types import Event, EventSink, Finished, TextDelta
from edgefleet.node.tool_calls.parser import ToolCallParser

log = logging.getLogger("edgefleet.node.tool_calls")


class ToolCallSink:
    def __init__(self, parser: ToolCallParser, sink: EventSink) -> None:
        self.parser = parser
        self._sink = sink

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            for out in self.parser.feed(event.text):
                self._sink(out)
        elif isinstance(event, Finished):
            outs, reason = self.parser.finish(event.text_tail, event.reason)
            for out in outs:
                self._sink(out)
            if self.parser.rejected:
                log.warning(
                    "the model wrote tool calls that are not valid calls",
                    extra={"rejected": self.parser.rejected[:4], "calls": len(self.parser.calls)},
                )
            self._sink(Finished(reason, event.usage, ""))
        else:
            self._sink(event)
