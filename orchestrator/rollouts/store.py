"""Rollouts on disk: one row per rollout, its whole status as JSON, in `<registry>.rollouts.db`
beside the registry (synchronous=FULL: a status is durable before the action it announces runs).

The driver writes a status before it acts on it (orchestrator/rollouts/driver.py), so after a
restart (or a kill -9) the stored status says what was done and what is still due.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from edgefleet.plumbing.sqlite_db import Migration, open_database
from edgefleet.proto.rollouts import RolloutStatus

log = logging.getLogger("edgefleet.orchestrator.rollouts.store")

MIGRATIONS: list[Migration] = [
    [
        """CREATE TABLE IF NOT EXISTS rollouts (
            name TEXT PRIMARY KEY, target TEXT NOT NULL, state TEXT NOT NULL, active INTEGER NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL, doc TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS rollouts_active ON rollouts (active, created)",
    ]
]


def rollouts_path(registry_db: Path) -> Path:
    return registry_db.with_suffix(".rollouts.db")


class RolloutStore:
    """Every method holds the store's lock; `save` commits before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS, "FULL")
        self._lock = threading.Lock()

    def save(self, status: RolloutStatus) -> None:
        with self._lock, self.db.conn:
            self.db.execute(
                "INSERT INTO rollouts (name, target, state, active, created, updated, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, active = excluded.active, "
                "updated = excluded.updated, doc = excluded.doc",
                [
                    status.name,
                    status.plan.target.key,
                    status.state,
                    int(not status.terminal),
                    status.created_at,
                    status.updated_at or time.time(),
                    status.model_dump_json(),
                ],
            )

    def get(self, name: str) -> RolloutStatus | None:
        with self._lock:
            row = self.db.execute("SELECT doc FROM rollouts WHERE name = ?", [name]).fetchone()
        return self._parse(name, row[0]) if row else None

    def all(self, active_only: bool = False) -> list[RolloutStatus]:
        """Newest first."""
        sql = "SELECT name, doc FROM rollouts" + (" WHERE active = 1" if active_only else "") + " ORDER BY created DESC"
        with self._lock:
            rows = self.db.execute(sql).fetchall()
        parsed = [self._parse(n, d) for n, d in rows]
        return [s for s in parsed if s is not None]

    def names(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT name FROM rollouts").fetchall()}

    @staticmethod
    def _parse(name: str, doc: str) -> RolloutStatus | None:
        try:
            return RolloutStatus.model_validate_json(doc)
        except ValidationError as e:
            log.error("stored rollout no longer valid; left alone", extra={"rollout": name, "reason": str(e)[:300]})
            return None

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
