"""The sink between the engine and a knowledge answer's edge: the answer checked against its sources.

Text passes through as it comes (nothing is held back). At the end, `grounding.check` judges the
whole answer; the verdict is put in the request's `Grounding` before the Finished event goes on, so
the edge that reads Finished reads the verdict too, and what the verdict appends (the sources' own
sentence, quoted with its citation, or the abstain text) comes as Finished's text tail. An answer
below the relevance threshold never reaches the engine: `abstain_now` sends the abstain text.
It runs on the engine thread, as any sink.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edgefleet.node.engine.types import Event, EventSink, Finished, FinishReason, TextDelta, Usage
from edgefleet.node.knowledge.grounding import ABSTAIN_TEXT, Source, Verdict, abstain, check

log = logging.getLogger("edgefleet.node.knowledge.grounding")


@dataclass
class Grounding:
    """One answer's grounding: its sources, their relevance, and (once finished) the verdict."""

    question: str
    sources: list[Source]
    relevance: float
    verdict: Verdict | None = None


class GroundedSink:
    def __init__(self, grounding: Grounding, sink: EventSink, extractive: bool) -> None:
        self.grounding = grounding
        self._sink = sink
        self._extractive = extractive
        self._text: list[str] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, Finished) and event.reason != FinishReason.CANCELLED:
            g = self.grounding
            answer = "".join(self._text) + event.text_tail
            try:
                g.verdict = check(g.question, answer, g.sources, self._extractive)
            except Exception:  # a checker bug flags the answer, never loses it
                log.exception("grounding check failed")
                g.verdict = Verdict((), False, False, "", "error")
            log.info(
                "knowledge answer checked",
                extra={
                    "reason": g.verdict.reason,
                    "citations": [c.chunk_id for c in g.verdict.citations],
                    "relevance": g.relevance,
                },
            )
            event = Finished(event.reason, event.usage, event.text_tail + g.verdict.appendix)
        self._sink(event)


def abstain_now(grounding: Grounding, sink: EventSink, arrived: float, reason: str) -> None:
    """Answer the abstain text without the model (the sources are below the relevance threshold)."""
    grounding.verdict = abstain(reason)
    log.info("knowledge answer abstained", extra={"reason": reason, "relevance": grounding.relevance})
    total = (time.monotonic() - arrived) * 1000
    sink(TextDelta(ABSTAIN_TEXT))
    sink(Finished(FinishReason.STOP, Usage(0, 0, 0, 0.0, total, 0.0, total)))
