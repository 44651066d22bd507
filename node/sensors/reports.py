"""How the sensor stages report a problem: the node's error-report path (log + ErrorReport on its errors topic)."""

from __future__ import annotations

from typing import Protocol


class Report(Protocol):
    def __call__(self, code: str, message: str, topic: str = "", *, once_per: float = 0.0) -> None: ...


def no_report(code: str, message: str, topic: str = "", *, once_per: float = 0.0) -> None:
    """A `Report` that reports nothing (a stage used on its own, without a node's fault reporter)."""
