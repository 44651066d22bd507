"""Per-rule counters for telemetry, in memory since the node started (the ledger holds what must last)."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuleCounters:
    messages_in: int
    duplicates: int
    answered: int
    errors: int
    latency_p50_ms: float | None  # over the last `window` answers, message received → answer written


@dataclass
class _Rule:
    messages_in: int = 0
    duplicates: int = 0
    answered: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=deque)


class SensorStats:
    """Thread-safe counters: the MQTT thread counts messages, the engine callback counts answers."""

    def __init__(self, window: int = 256) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._lock = threading.Lock()
        self._rules: dict[str, _Rule] = {}

    def _rule(self, rule: str) -> _Rule:
        r = self._rules.get(rule)
        if r is None:
            r = self._rules[rule] = _Rule(latencies=deque(maxlen=self.window))
        return r

    def message_in(self, rule: str, duplicate: bool = False) -> None:
        with self._lock:
            r = self._rule(rule)
            r.messages_in += 1
            r.duplicates += duplicate

    def answered(self, rule: str, latency_ms: float) -> None:
        with self._lock:
            r = self._rule(rule)
            r.answered += 1
            r.latencies.append(latency_ms)

    def error(self, rule: str) -> None:
        with self._lock:
            self._rule(rule).errors += 1

    def snapshot(self) -> dict[str, RuleCounters]:
        with self._lock:
            return {
                name: RuleCounters(
                    r.messages_in,
                    r.duplicates,
                    r.answered,
                    r.errors,
                    statistics.median(r.latencies) if r.latencies else None,
                )
                for name, r in sorted(self._rules.items())
            }
