"""The node's record of its base model, in node.db: what is committed, what is being switched to,
what served before, and which models were refused.

A model from the site (`DesiredState.model`) goes through three slots:

- `pending`: downloaded and verified, not yet proven; the next start of the process loads and checks
  it (node/model_switch.py). `attempts` counts those starts: one that began and never finished (the
  process died while loading or checking it) drops it as refused on the start after.
- `committed`: the model this node serves, loaded at every start; absent: the node's own model
  (EDGEFLEET_MODEL, else its profile's).
- `previous`: the model committed before, whose file stays on disk so a return to it (a rollback)
  needs no download; older files are removed when a model is committed.

A refusal (over the memory budget, a load or check that failed) is kept by the model's sha256, so a
restarted node neither fetches nor tries it again and reports why; `announced` says whether the error
topic has had it (a refusal found at start is published once the node is connected).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import sqlite_utils

from edgefleet.node.errors import ModelError
from edgefleet.node.model_catalog import GGUF_MAGIC, ModelFile

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS base_models (
        slot TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS base_model_refusals (
        key TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        reason TEXT NOT NULL,
        announced INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL
    )""",
]
OWN = "own"  # the refusal key of the node's own model (it has no artifact sha256)


@dataclass(frozen=True)
class ModelSlot:
    """A base model the node may serve: an artifact (name, version, sha256, file) or, with no name,
    the node's own model."""

    name: str = ""
    version: str = ""
    sha256: str = ""
    path: Path | None = None
    size: int = 0
    attempts: int = 0

    @property
    def own(self) -> bool:
        return not self.name

    @property
    def label(self) -> str:
        """`<name>@<version>` (what the node reports), or "own model"."""
        return f"{self.name}@{self.version}" if self.name else "own model"

    @property
    def key(self) -> str:
        return self.sha256 or OWN

    def model_file(self) -> ModelFile:
        """The file to load; ModelError when it is gone, has another size or is no GGUF file."""
        assert self.path is not None
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise ModelError(f"model {self.label}: {self.path} cannot be read: {e}") from e
        if size != self.size:
            raise ModelError(f"model {self.label}: {self.path} is {size} bytes; {self.size} were verified")
        if magic != GGUF_MAGIC:
            raise ModelError(f"model {self.label}: {self.path} is not a GGUF file")
        return ModelFile(name=self.label, path=self.path, size=self.size, sha256=self.sha256)


class BaseModels:
    """The slots and refusals above; one lock serializes writers (sync thread, start, serve)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._lock = threading.Lock()

    # -- slots ---------------------------------------------------------------------------------
    def _get(self, slot: str) -> ModelSlot | None:
        row = self.db.execute(
            "SELECT name, version, sha256, path, size, attempts FROM base_models WHERE slot = ?", [slot]
        ).fetchone()
        if row is None:
            return None
        return ModelSlot(row[0], row[1], row[2], Path(row[3]) if row[3] else None, row[4], row[5])

    def _put(self, slot: str, m: ModelSlot) -> None:
        self.db.execute(
            "INSERT INTO base_models (slot, name, version, sha256, path, size, attempts, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(slot) DO UPDATE SET name=excluded.name, "
            "version=excluded.version, sha256=excluded.sha256, path=excluded.path, size=excluded.size, "
            "attempts=excluded.attempts, at=excluded.at",
            [slot, m.name, m.version, m.sha256, str(m.path or ""), m.size, m.attempts, time.time()],
        )

    def _drop(self, slot: str) -> None:
        self.db.execute("DELETE FROM base_models WHERE slot = ?", [slot])

    def committed(self) -> ModelSlot | None:
        return self._get("committed")

    def pending(self) -> ModelSlot | None:
        return self._get("pending")

    def previous(self) -> ModelSlot | None:
        return self._get("previous")

    def set_pending(self, m: ModelSlot) -> None:
        with self._lock, self.db.conn:
            self._put("pending", replace(m, attempts=0))

    def begin_attempt(self, max_attempts: int = 1) -> tuple[ModelSlot | None, ModelSlot | None]:
        """At start: (the pending model to load now, with its attempt counted; a pending model refused
        because it was tried `max_attempts` times already and never committed)."""
        with self._lock, self.db.conn:
            m = self._get("pending")
            if m is None:
                return None, None
            if m.attempts >= max_attempts:
                self._drop("pending")
                return None, m
            m = replace(m, attempts=m.attempts + 1)
            self._put("pending", m)
            return m, None

    def drop_pending(self, m: ModelSlot) -> None:
        """Forget a pending model that failed; its file goes unless another slot holds it."""
        with self._lock, self.db.conn:
            self._drop("pending")
            kept = {s.path for s in (self._get("committed"), self._get("previous")) if s is not None}
        if m.path is not None and m.path not in kept:
            m.path.unlink(missing_ok=True)

    def forget_committed(self) -> None:
        with self._lock, self.db.conn:
            self._drop("committed")

    def commit(self, m: ModelSlot) -> None:
        """`m` serves from now: it becomes committed, what was committed becomes previous (its file
        stays), and the file of the one before that is removed."""
        with self._lock, self.db.conn:
            before, oldest = self._get("committed"), self._get("previous")
            self._drop("pending")
            if m.own:
                self._drop("committed")
            else:
                self._put("committed", replace(m, attempts=0))
            if before is not None and before.sha256 != m.sha256:
                self._put("previous", before)
            elif before is None:
                self._drop("previous")  # the own model served before: it is always on disk
            keep = {s.path for s in (self._get("committed"), self._get("previous")) if s is not None}
        if oldest is not None and oldest.path is not None and oldest.path not in keep:
            with contextlib.suppress(OSError):
                oldest.path.unlink(missing_ok=True)

    # -- refusals ------------------------------------------------------------------------------
    def refuse(self, m: ModelSlot, reason: str, announced: bool = False) -> None:
        with self._lock, self.db.conn:
            self.db.execute(
                "INSERT INTO base_model_refusals (key, label, reason, announced, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET label=excluded.label, reason=excluded.reason, "
                "announced=excluded.announced, at=excluded.at",
                [m.key, m.label, reason, int(announced), time.time()],
            )

    def refusals(self) -> dict[str, tuple[str, str]]:
        """key (sha256, or OWN) → (label, reason)."""
        rows = self.db.execute("SELECT key, label, reason FROM base_model_refusals").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def unannounced(self) -> dict[str, tuple[str, str]]:
        rows = self.db.execute("SELECT key, label, reason FROM base_model_refusals WHERE announced = 0").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def announced(self, key: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("UPDATE base_model_refusals SET announced = 1 WHERE key = ?", [key])

    def forgive(self, keep: str) -> None:
        """Another model is desired: refusals of all others are dropped, so a later return to one tries it again."""
        with self._lock, self.db.conn:
            self.db.execute("DELETE FROM base_model_refusals WHERE key != ?", [keep])
