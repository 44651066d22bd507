"""The console's view of a balena fleet: a thread that asks balena for the fleet's devices every
`console_balena_poll_s` (through balena-sdk, token from BALENA_API_KEY or balena's own config),
and the join with the console's fleet rows (fleet/balena/status_view.py) for the fleet page:
each node's balena state and a flag where the two views disagree."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edgefleet.fleet.balena.client import BalenaFleet, BalenaSyncError, make_sdk
from edgefleet.fleet.balena.plan import Device
from edgefleet.fleet.balena.status_view import join

log = logging.getLogger("edgefleet.console.balena")


class BalenaPoller:
    def __init__(self, fleet: str, api_url: str | None, interval_s: float, on_change: Callable[[], None]) -> None:
        self.fleet, self.api_url, self.interval_s, self.on_change = fleet, api_url, interval_s, on_change
        self._devices: list[Device] = []
        self.error = ""  # why the last poll failed ("" when it answered)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-balena-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client: BalenaFleet | None = None
        while not self._stop.is_set():
            try:
                client = client or BalenaFleet(make_sdk(self.api_url))
                devices, error = client.devices(self.fleet), ""
            except BalenaSyncError as e:
                devices, error = [], str(e)
            except Exception as e:  # the console keeps serving whatever balena does
                devices, error = [], f"balena: {type(e).__name__}: {e}"
            with self._lock:
                changed = (devices, error) != (self._devices, self.error)
                if devices or error:
                    self._devices, self.error = devices or self._devices, error
            if error:
                log.warning("balena poll failed", extra={"fleet": self.fleet, "reason": error})
            if changed:
                self.on_change()
            self._stop.wait(self.interval_s)

    def view(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """{"nodes": {node_id: row}, "others": [rows of devices or nodes seen by one side only], "error": …}"""
        with self._lock:
            devices, error = list(self._devices), self.error
        joined = join(devices, rows)
        known = {r["node_id"] for r in rows}
        return {
            "fleet": self.fleet,
            "nodes": {j.node_id: j.as_dict() for j in joined if j.node_id in known and j.device != "-"},
            "others": [j.as_dict() for j in joined if j.node_id not in known],
            "error": error,
        }
