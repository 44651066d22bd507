"""The engine's table of loaded LoRA adapters, with the versions requests still use.

A request pins the adapter version it starts with (its KV cells were computed with it). A new
version replaces the name at once for new requests; the old one is freed when the last request
using it finishes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from edgefleet.node.engine.types import AdapterUse
from edgefleet.node.errors import NotFound
from edgefleet.proto.input_limits import brief


@dataclass
class LoadedAdapter:
    name: str
    version: str
    sha256: str
    size: int
    handle: Any
    users: int = 0
    retired: bool = False
    meta: dict[str, str] = field(default_factory=dict)


class AdapterTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, LoadedAdapter] = {}
        self._by_handle: dict[int, LoadedAdapter] = {}

    def listing(self) -> list[LoadedAdapter]:
        with self._lock:
            return sorted(self._current.values(), key=lambda a: a.name)

    def get(self, name: str) -> LoadedAdapter | None:
        with self._lock:
            return self._current.get(name)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(a.size for a in self._by_handle.values())

    def acquire(self, name: str, scale: float) -> AdapterUse:
        """Pin the current version of `name` for one request."""
        with self._lock:
            entry = self._current.get(name)
            if entry is None:
                known = ", ".join(sorted(self._current)) or "none"
                raise NotFound(f"adapter {brief(name)} is not loaded on this node (loaded adapters: {known})")
            entry.users += 1
            return AdapterUse(entry.name, entry.version, scale, entry.handle)

    def release(self, use: AdapterUse) -> Any | None:
        """A request is done with its adapter; returns a handle to free, if that was its last user."""
        with self._lock:
            entry = self._by_handle.get(id(use.handle))
            if entry is None:
                return None
            entry.users -= 1
            return self._drop(entry) if entry.retired and entry.users <= 0 else None

    def install(self, entry: LoadedAdapter) -> Any | None:
        """Make `entry` current for its name; returns the old handle when nothing uses it any more."""
        with self._lock:
            self._by_handle[id(entry.handle)] = entry
            old = self._current.get(entry.name)
            self._current[entry.name] = entry
            return self._retire(old)

    def remove(self, name: str) -> Any | None:
        with self._lock:
            return self._retire(self._current.pop(name, None))

    def _retire(self, old: LoadedAdapter | None) -> Any | None:
        if old is None:
            return None
        old.retired = True
        return self._drop(old) if old.users <= 0 else None

    def _drop(self, entry: LoadedAdapter) -> Any:
        self._by_handle.pop(id(entry.handle), None)
        return entry.handle
