"""CPU used by other processes: waiting for a quiet machine and accounting for foreign load."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any


def _tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their live children."""
    import psutil

    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class CpuAccount:
    """How much CPU other processes (not the bench, not the backend) used during a measurement.

    llama.cpp's compute threads spin at barriers: a 2-core machine that is also running
    something else makes every backend several times slower, so figures taken while the
    machine was busy are flagged.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.t0 = time.perf_counter()
        self.busy0 = _busy_cpu_s()
        self.ours0 = _tree_cpu_s(self.pids)

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy = _busy_cpu_s() - self.busy0
        ours = _tree_cpu_s(self.pids) - self.ours0
        foreign = max(0.0, busy - ours)
        return {
            "wall_s": round(wall, 3),
            "cpu_busy_s": round(busy, 3),
            "cpu_ours_s": round(ours, 3),
            "cpu_foreign_s": round(foreign, 3),
            "foreign_share": round(foreign / (wall * (os.cpu_count() or 1)), 3),
        }


FOREIGN_SHARE_WARN = 0.10  # more than 10 % of the machine used by others: figures are suspect


WAIT_BUDGET = {"left_s": 150.0, "waited_s": 0.0}  # all the waiting one run may do (--wait-budget)


def wait_quiet(max_wait_s: float, threshold: float = 0.10, what: str = "") -> float:
    """Wait (up to max_wait_s) until the machine is idle: under `threshold` of all CPUs busy.

    Called while no backend is generating, so whatever is busy is someone else's.
    Returns the busy share of the last sample. The whole run waits at most WAIT_BUDGET.
    """
    import psutil

    max_wait_s = min(max_wait_s, WAIT_BUDGET["left_s"])
    t_begin = time.monotonic()
    try:
        return _wait_quiet(max_wait_s, threshold, what, psutil)
    finally:
        spent = time.monotonic() - t_begin
        WAIT_BUDGET["left_s"] = max(0.0, WAIT_BUDGET["left_s"] - spent)
        WAIT_BUDGET["waited_s"] += spent


def _wait_quiet(max_wait_s: float, threshold: float, what: str, psutil: Any) -> float:
    t_end = time.monotonic() + max_wait_s
    share = psutil.cpu_percent(interval=0.5) / 100.0
    if share < threshold:
        return share
    print(
        f"  waiting for the machine to be quiet{what}: {share:.0%} of the CPUs busy (other processes) ...", flush=True
    )
    while time.monotonic() < t_end:
        share = psutil.cpu_percent(interval=1.0) / 100.0
        if share < threshold:
            print(f"  quiet now ({share:.0%} busy)", flush=True)
            return share
    left = "" if WAIT_BUDGET["left_s"] > max_wait_s else " (the run's waiting budget is spent)"
    print(
        f"  WARNING: still {share:.0%} busy after {max_wait_s:.0f} s{left}; measuring anyway "
        f"(figures will be low and noisy)",
        flush=True,
    )
    return share
