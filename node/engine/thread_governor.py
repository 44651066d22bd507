"""Chooses the compute thread count from measured decode steps: data in, a thread count out.

ggml's CPU threads (this build has OpenMP off) meet at a spinning barrier after every graph node.
When another process holds one of the cores, a thread waits at each barrier until the scheduler
runs its peer again: measured on 2 cores with one busy process beside the node, 2 threads fall
from 151 to 0.5 tokens/s while 1 thread keeps 154 (`bench/thread_contention.py`). A device
shares its cores with the broker, the orchestrator and whatever else the site runs, so the
engine cannot assume it owns them.

The governor times decode-only steps (one token per sequence) per thread count and batch size.
At once when steps suddenly take several times longer than usual, it probes one thread fewer;
now and then it probes one more (or, with all threads in use, one fewer). A probe runs a few
steps and is kept when it is clearly faster, so a 4-core device with one busy core should settle
on 3 threads, with two on 2, and climb back when they are free.
A probe step that is far slower than the reference ends the probe at once, so a probe into a
contended setting costs one step. Probes that lose come less and less often (the interval
doubles up to a ceiling); a switch resets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Probe:
    threads: int
    steps: int = 0
    probe_s: float = 0.0  # summed over the steps that have a reference
    reference_s: float = 0.0  # what the current setting took lately for the same batch sizes
    seen: dict[int, list[float]] = field(default_factory=dict)  # step times by tokens in the step


@dataclass
class ThreadGovernor:
    max_threads: int
    probe_steps: int = 8
    first_interval_s: float = 10.0
    max_interval_s: float = 120.0
    margin: float = 0.15  # the probed setting must be this much faster to be kept
    slow_factor: float = 4.0  # a step this many times its usual time is "slow"
    slow_run: int = 3  # this many slow steps in a row start a probe at once
    extreme_factor: float = 20.0  # one step this many times its usual time starts a probe at once
    current: int = 0
    switches: int = 0
    # Per (threads, tokens in the step): `usual` learns from steps that were not slow, `recent`
    # from every step (what the setting does now: the reference a probe must beat).
    _usual: dict[tuple[int, int], float] = field(default_factory=dict)
    _recent: dict[tuple[int, int], float] = field(default_factory=dict)
    _probe: _Probe | None = None
    _interval_s: float = 0.0
    _next_probe_at: float | None = None
    _slow: int = 0
    _direction: int = 0  # -1 / +1 after a kept probe: try the next count that way at once

    def __post_init__(self) -> None:
        if self.max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.current = self.current or self.max_threads
        self._interval_s = self.first_interval_s

    def threads_for_step(self, now: float) -> int:
        """The thread count for the next decode step (a probe's, while one runs)."""
        if self.max_threads == 1:
            return 1
        if self._next_probe_at is None:
            self._next_probe_at = now + self._interval_s
        if self._probe is None and now >= self._next_probe_at:
            self._probe = _Probe(self._candidate())
        return self._probe.threads if self._probe is not None else self.current

    def _candidate(self) -> int:
        """The count to probe: on in the direction that last paid off; one fewer when steps turned
        slow or every thread is in use; else one more."""
        down = self.current > 1
        up = self.current < self.max_threads
        if (self._direction < 0 and down) or (self._direction > 0 and up):
            return self.current + self._direction
        if down and (self._slow > 0 or not up):
            return self.current - 1
        return self.current + 1

    def observe(self, threads: int, n_tokens: int, seconds: float, now: float) -> str | None:
        """Record a decode-only step of `n_tokens` tokens; returns a reason when `current` changed."""
        if self.max_threads == 1 or seconds <= 0:
            return None
        key = (threads, n_tokens)
        probe = self._probe
        if probe is not None and threads == probe.threads:
            return self._observe_probe(probe, n_tokens, seconds, now)
        _mix(self._recent, key, seconds, 0.3)
        usual = self._usual.get(key)
        if usual is not None and seconds > self.slow_factor * usual:
            self._slow += 1
            extreme = seconds > self.extreme_factor * usual  # a collapse costs seconds a step: act now
            if (self._slow >= self.slow_run or extreme) and probe is None:
                self._next_probe_at = now  # something took the cores: try the other setting now
            return None
        self._slow = 0
        _mix(self._usual, key, seconds, 0.1)
        return None

    def _observe_probe(self, probe: _Probe, n_tokens: int, seconds: float, now: float) -> str | None:
        probe.steps += 1
        probe.seen.setdefault(n_tokens, []).append(seconds)
        reference = self._recent.get((self.current, n_tokens))
        if reference is not None:
            if seconds > self.slow_factor * reference:
                self._end_probe(now, kept=False)  # far slower: do not pay for more steps
                return None
            probe.probe_s += seconds
            probe.reference_s += reference
        have_reference = probe.reference_s > 0
        if probe.steps < self.probe_steps or (not have_reference and probe.steps < 3 * self.probe_steps):
            return None
        if not (have_reference and probe.probe_s < (1.0 - self.margin) * probe.reference_s):
            self._end_probe(now, kept=False)
            return None
        reason = (
            f"{probe.threads} threads decoded {probe.steps} steps in {probe.probe_s * 1000:.1f} ms; "
            f"{self.current} threads took {probe.reference_s * 1000:.1f} ms lately"
        )
        direction = 1 if probe.threads > self.current else -1
        for n, times in probe.seen.items():  # what this count does now, not what it did long ago
            self._recent[(probe.threads, n)] = self._usual[(probe.threads, n)] = sum(times) / len(times)
        self.current = probe.threads
        self.switches += 1
        self._end_probe(now, kept=True)
        self._direction = direction
        self._next_probe_at = now  # the next count that way may be better still
        return reason

    def _end_probe(self, now: float, kept: bool) -> None:
        if not kept and self._slow > 0:
            # Slow for both settings: the machine is just busier. Take today's times as usual.
            for key, value in self._recent.items():
                if key[0] == self.current:
                    self._usual[key] = value
        self._probe = None
        self._slow = 0
        self._direction = 0
        self._interval_s = self.first_interval_s if kept else min(self._interval_s * 2, self.max_interval_s)
        self._next_probe_at = now + self._interval_s


def _mix(means: dict[tuple[int, int], float], key: tuple[int, int], seconds: float, alpha: float) -> None:
    mean = means.get(key)
    means[key] = seconds if mean is None else mean + alpha * (seconds - mean)
