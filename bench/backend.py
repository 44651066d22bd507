"""What every backend is: started once, measured level by level, stopped at the end."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import Client, run_level
from bench.processes import RssMonitor, log_tail, stop_process
from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.settings import LOG_DIR
from bench.site_security import BenchSecurity


@dataclass
class BenchContext:
    args: argparse.Namespace
    model: Path
    levels: list[int]
    # plans[level][repeat][attempt] -> plan[client][round]; the same prompts for every backend
    plans: dict[int, list[list[list[list[Prompt]]]]]
    warm_prompt: Prompt
    count_tokens: Callable[[str], int]
    security: BenchSecurity  # the node's certificate and the clients' channels (secure unless --insecure)


class Backend:
    """A running backend. Idle between measurements; only one generates at a time."""

    name = ""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.proc: subprocess.Popen[Any] | None = None
        self.monitor: RssMonitor | None = None
        self.log_path = LOG_DIR / f"{self.name}.log"
        self._log: Any = None
        self.info: dict[str, Any] = {}

    def _spawn(self, cmd: list[str], cwd: Path, **kw: Any) -> subprocess.Popen[Any]:
        self._log = self.log_path.open("w")
        self.info["command"] = cmd
        self.proc = subprocess.Popen(
            cmd, stderr=self._log, start_new_session=True, cwd=str(cwd), **({"stdout": self._log} | kw)
        )
        self.monitor = RssMonitor(self.proc.pid).start()
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def warm(self) -> None:
        """One request before measuring: graph allocation, caches, connections."""
        self.measure([[self.ctx.warm_prompt]])

    def measure(self, plan: list[list[Prompt]]) -> tuple[list[RequestRecord], dict[str, float]]:
        raise NotImplementedError

    def finish(self) -> None:
        """Final figures, taken while the process still runs."""
        if self.monitor is not None:
            self.monitor.stop()
            hwm = self.monitor.vm_hwm()
            self.info.update(
                peak_rss_polled_bytes=self.monitor.peak,
                vm_hwm_bytes=hwm,
                peak_rss_bytes=max(self.monitor.peak, hwm or 0),
                rss_samples=self.monitor.samples,
            )

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def failure(self, e: BaseException) -> RuntimeError:
        return RuntimeError(f"{e}\n--- {self.name} log ({self.log_path}) ---\n{log_tail(self.log_path)}")


class ThreadedBackend(Backend):
    """Measured with N client threads, each with its own connection."""

    def make_client(self) -> Client:
        raise NotImplementedError

    def measure(self, plan: list[list[Prompt]]) -> tuple[list[RequestRecord], dict[str, float]]:
        return run_level(self.make_client, plan, self.ctx.args.max_tokens, [self.pid])
