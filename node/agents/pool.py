"""At most N agent runs advancing at once, each run on one worker at a time.

A run id put while a worker has it is remembered and advanced again when that worker is done
(a decision that arrives while the run is still saving its waiting step is not lost). `claim`
lets another thread (the effects retrier) hold a run the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("edgefleet.node.agents")


class RunPool:
    def __init__(self, work: Callable[[str], None], workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.work = work
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._queued: set[str] = set()
        self._threads = [
            threading.Thread(target=self._run, name=f"edgefleet-agent-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    def put(self, run_id: str) -> None:
        with self._lock:
            if run_id in self._active:
                self._again.add(run_id)
                return
            if run_id in self._queued:
                return
            self._queued.add(run_id)
        self._queue.put(run_id)

    def claim(self, run_id: str) -> bool:
        """Hold `run_id` for the caller (False: a worker has it or it is queued); `release` it after."""
        with self._lock:
            if run_id in self._active or run_id in self._queued:
                return False
            self._active.add(run_id)
            return True

    def release(self, run_id: str) -> None:
        with self._lock:
            self._active.discard(run_id)
            again = run_id in self._again
            self._again.discard(run_id)
        if again:
            self.put(run_id)

    def busy(self) -> int:
        with self._lock:
            return len(self._active)

    def _run(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None:
                return
            with self._lock:
                self._queued.discard(run_id)
                self._active.add(run_id)
            try:
                self.work(run_id)
            except Exception:
                log.exception("agent run failed unexpectedly", extra={"run": run_id})
            finally:
                self.release(run_id)
