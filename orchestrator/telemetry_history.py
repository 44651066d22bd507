"""A bounded telemetry history per node: one row per node and minute, kept for a day (SQLite).

Nodes publish telemetry every few seconds; a console plotting the last hour needs far less. Each
`record` folds one telemetry into its bucket (`bucket_s`, 60 by default) as a sum and a count, so
`series` returns the bucket means. Rows older than `retention_s` (24 h) are deleted as new buckets
start, so the file stays at about nodes x 1440 rows. A pure store: no MQTT, no threads of its own;
every method holds the store's lock, so ingest (network thread) and a command worker may share it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal, get_args

from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.payloads import Telemetry

Metric = Literal["tokens_per_second", "temperature_c", "queue_depth", "slots_busy", "rss_bytes"]
METRICS: tuple[str, ...] = get_args(Metric)

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS telemetry_buckets (
        node_id TEXT NOT NULL, bucket INTEGER NOT NULL, samples INTEGER NOT NULL,
        tokens_per_second REAL NOT NULL, temperature_c REAL, temperature_samples INTEGER NOT NULL,
        queue_depth REAL NOT NULL, slots_busy REAL NOT NULL, rss_bytes REAL NOT NULL,
        PRIMARY KEY (node_id, bucket)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS telemetry_buckets_by_time ON telemetry_buckets (bucket)",
]


class UnknownMetric(ValueError):
    pass


class TelemetryHistory:
    def __init__(self, path: Path, bucket_s: int = 60, retention_s: int = 24 * 3600) -> None:
        if bucket_s < 1 or retention_s < bucket_s:
            raise ValueError(f"bucket_s ({bucket_s}) must be ≥ 1 and ≤ retention_s ({retention_s})")
        self.bucket_s, self.retention_s = bucket_s, retention_s
        self.db = open_database(path, MIGRATIONS, "NORMAL")
        self._lock = threading.Lock()
        self._newest_bucket = 0

    def record(self, t: Telemetry) -> None:
        """Fold one telemetry into its node's bucket; a new bucket prunes what is past retention."""
        bucket = int(t.ts // self.bucket_s) * self.bucket_s
        temp = t.temperature_c
        with self._lock, self.db.conn:
            self.db.execute(
                """INSERT INTO telemetry_buckets VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (node_id, bucket) DO UPDATE SET
                    samples = samples + 1,
                    tokens_per_second = tokens_per_second + excluded.tokens_per_second,
                    temperature_c = CASE WHEN excluded.temperature_c IS NULL THEN temperature_c
                                         ELSE coalesce(temperature_c, 0) + excluded.temperature_c END,
                    temperature_samples = temperature_samples + excluded.temperature_samples,
                    queue_depth = queue_depth + excluded.queue_depth,
                    slots_busy = slots_busy + excluded.slots_busy,
                    rss_bytes = rss_bytes + excluded.rss_bytes""",
                [
                    t.node_id,
                    bucket,
                    t.tokens_per_second,
                    temp,
                    0 if temp is None else 1,
                    t.queue_depth,
                    t.slots_busy,
                    t.rss_bytes,
                ],
            )
            if bucket > self._newest_bucket:
                self._newest_bucket = bucket
                self.db.execute("DELETE FROM telemetry_buckets WHERE bucket < ?", [bucket - self.retention_s])

    def series(self, node_id: str, metric: str, since: float) -> list[tuple[float, float | None]]:
        """(bucket start, mean) of `metric` for `node_id` from the bucket holding `since`, oldest first.
        A bucket without a temperature reading has None for temperature_c."""
        if metric not in METRICS:
            raise UnknownMetric(f"metric {metric!r} is not kept; known: {', '.join(METRICS)}")
        start = int(max(since, time.time() - self.retention_s) // self.bucket_s) * self.bucket_s
        divisor = "temperature_samples" if metric == "temperature_c" else "samples"
        with self._lock:
            rows = self.db.execute(
                f"SELECT bucket, {metric}, {divisor} FROM telemetry_buckets "  # metric: one of METRICS (checked)
                "WHERE node_id = ? AND bucket >= ? ORDER BY bucket",
                [node_id, start],
            ).fetchall()
        return [(float(b), (total / n) if n and total is not None else None) for b, total, n in rows]

    def all_series(self, node_id: str, since: float) -> dict[str, list[tuple[float, float | None]]]:
        """Every kept metric of one node since `since` (what a node page plots)."""
        return {m: self.series(node_id, m, since) for m in METRICS}

    def nodes(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT node_id FROM telemetry_buckets ORDER BY 1")]

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
