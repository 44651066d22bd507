"""Opening a part's SQLite database: WAL, a durability level, and its one migration set.

Shared by the node's and the orchestrator's stores; each part keeps its own migrations.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import sqlite_utils


def open_database(
    path: Path, migrations: list[str], synchronous: Literal["NORMAL", "FULL"] = "FULL"
) -> sqlite_utils.Database:
    """Open `path`, apply the migrations not yet applied (PRAGMA user_version counts them).

    The connection may be used from several threads (the MQTT network thread and the gRPC
    loop); callers serialize their writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
    db.enable_wal()
    db.execute(f"PRAGMA synchronous={synchronous}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for i, sql in enumerate(migrations[version:], start=version + 1):
        with db.conn:
            db.execute(sql)
            db.execute(f"PRAGMA user_version={i}")
    return db
