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
contended setting costs one step: seconds, when the threads collapse. Probes that lose therefore
come less and less often (the interval doubles up to a ceiling, minutes); a switch resets it.

The end of the contention must not wait for that ceiling (issue 26: about 3 minutes at half the
throughput after a transient load). Below every thread, two signs that the cores may be free
again ask for a probe of one more thread before the interval is up:
- the idle CPU time of the cores the node may run on (decode_step.py's `machine_idle_s`, fed to `observe` every
  `idle_window_s`, when `idle_wanted`): at least `free_core` of a core idle while the node
  decoded, the time between its steps counted as its own;
- the current setting's own steps clearly faster (`margin`) than when it was taken, for a busy
  process that also slowed the threads the node kept.
Either may be wrong (a process that wakes often leaves idle time and still breaks the barriers),
so asked-for probes that lose come less and less often too: at once, then after the first
interval, doubling to the ceiling, on a schedule of their own that a switch resets. Under steady
contention probes stay rare: at most one of each schedule per ceiling.
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
    asked: bool = False  # asked for by a sign that the cores are free (`_freed`), before its time


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
    idle_window_s: float = 1.0  # the machine's idle time is read this often, below every thread
    free_core: float = 0.5  # this share of a core idle while the node decoded asks for a probe
    current: int = 0
    switches: int = 0
    # Per (threads, tokens in the step): `usual` learns from steps that were not slow, `recent`
    # from every step (what the setting does now: the reference a probe must beat).
    _usual: dict[tuple[int, int], float] = field(default_factory=dict)
    _recent: dict[tuple[int, int], float] = field(default_factory=dict)
    # Below every thread: the current setting's step times when it was taken (steps clearly faster
    # say the cores may be free again), and the idle-time window: (start, idle total then, step
    # seconds since).
    _taken_at: dict[tuple[int, int], float] = field(default_factory=dict)
    _idle_from: tuple[float, float] | None = None
    _idle_busy_s: float = 0.0
    _probe: _Probe | None = None
    _interval_s: float = 0.0
    _next_probe_at: float | None = None
    _slow: int = 0
    _direction: int = 0  # -1 / +1 after a kept probe: try the next count that way at once
    _asked: bool = False  # the next probe is one `_freed` asked for
    _ask_interval_s: float = 0.0  # asked-for probes that lose: their own doubling interval
    _ask_after: float = 0.0

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
        if self._probe is None and (self._asked or now >= self._next_probe_at):
            asked = self._asked and now < self._next_probe_at
            self._probe = _Probe(self.current + 1 if asked else self._candidate(), asked=asked)
            self._asked, self._idle_from = False, None  # the probe's steps use other cores
        return self._probe.threads if self._probe is not None else self.current

    def idle_wanted(self, now: float) -> bool:
        """Whether `observe` wants `idle_total_s` (`machine_idle_s`) with a step ending `now`."""
        below = self.current < self.max_threads and self._probe is None
        return below and (self._idle_from is None or now - self._idle_from[0] >= self.idle_window_s)

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

    def observe(
        self, threads: int, n_tokens: int, seconds: float, now: float, idle_total_s: float | None = None
    ) -> str | None:
        """Record a decode-only step of `n_tokens` tokens; returns a reason when `current` changed.

        `idle_total_s`: `machine_idle_s()` where `idle_wanted`, else None."""
        if self.max_threads == 1 or seconds <= 0:
            return None
        key = (threads, n_tokens)
        probe = self._probe
        if probe is not None and threads == probe.threads:
            return self._observe_probe(probe, n_tokens, seconds, now)
        _mix(self._recent, key, seconds, 0.3)
        below = probe is None and threads == self.current < self.max_threads
        if below and self._freed(key, seconds, now, idle_total_s) and now >= self._ask_after:
            self._asked = True
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

    def _freed(self, key: tuple[int, int], seconds: float, now: float, idle_total_s: float | None) -> bool:
        """Whether a sign says that the cores the current setting left may be free again."""
        taken_at = self._taken_at.setdefault(key, self._recent[key])  # a batch size new since the switch
        faster = self._usual.get(key, taken_at) < (1.0 - self.margin) * taken_at  # the slower mean
        if self._idle_from is not None:
            self._idle_busy_s += seconds
        if idle_total_s is None:
            return faster
        start = self._idle_from
        if start is not None and now - start[0] < self.idle_window_s:
            return faster
        self._idle_from, busy = (now, idle_total_s), self._idle_busy_s
        self._idle_busy_s = 0.0
        if start is None:
            return faster
        wall = now - start[0]
        # The node's own core may idle between its steps (no requests, Python): not a free core.
        free = (idle_total_s - start[1] - (wall - busy)) / wall
        return faster or (busy >= 0.5 * wall and free >= self.free_core)

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
        self._taken_at = {(probe.threads, n): self._recent[(probe.threads, n)] for n in probe.seen}
        self.current = probe.threads
        self.switches += 1
        self._end_probe(now, kept=True)
        if 1 <= self.current + direction <= self.max_threads:
            self._direction = direction
            self._next_probe_at = now  # the next count that way may be better still
        return reason

    def _end_probe(self, now: float, kept: bool) -> None:
        if not kept and self._slow > 0:
            # Slow for both settings: the machine is just busier. Take today's times as usual.
            for key, value in self._recent.items():
                if key[0] == self.current:
                    self._usual[key] = value
        asked = self._probe is not None and self._probe.asked
        self._probe = None
        self._slow = 0
        self._direction = 0
        if kept:
            self._interval_s, self._ask_interval_s, self._ask_after = self.first_interval_s, 0.0, now
        elif asked:  # the sign was wrong, or came while the load was still ending: ask again later
            self._ask_interval_s = min(max(self._ask_interval_s * 2, self.first_interval_s), self.max_interval_s)
            self._ask_after = now + self._ask_interval_s
            return  # the regular probes keep their time
        else:
            self._interval_s = min(self._interval_s * 2, self.max_interval_s)
        self._next_probe_at = now + self._interval_s


def _mix(means: dict[tuple[int, int], float], key: tuple[int, int], seconds: float, alpha: float) -> None:
    mean = means.get(key)
    means[key] = seconds if mean is None else mean + alpha * (seconds - mean)
