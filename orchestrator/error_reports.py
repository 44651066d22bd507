"""Input the orchestrator refuses is reported on its errors topic, with a code and the reason."""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgefleet.proto.payloads import ErrorReport
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.orchestrator.errors")

SOURCE = "orchestrator"

Publish = Callable[[str, bytes], object]  # (topic, payload), QoS 1, not retained


class ErrorReporter:
    def __init__(self, topics: Topics, publish: Publish) -> None:
        self.topic = topics.errors(SOURCE)
        self.publish = publish

    def report(self, topic: str, code: str, message: str) -> None:
        """`code`: an `ErrorCode` value. `topic`: where the refused input arrived."""
        log.warning("input refused", extra={"topic": topic, "code": str(code), "reason": message})
        self.publish(self.topic, ErrorReport(source=SOURCE, code=str(code), message=message, topic=topic).dumps())
