"""The telemetry history store: minute buckets of means, bounded to its retention, on real SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet.orchestrator.telemetry_history import METRICS, TelemetryHistory, UnknownMetric
from edgefleet.proto.payloads import Telemetry


def telemetry(node: str, ts: float, tps: float = 10.0, temp: float | None = 50.0, queue: int = 0) -> Telemetry:
    return Telemetry(
        node_id=node,
        ts=ts,
        queue_depth=queue,
        slots_busy=1,
        slots_total=2,
        slots_available=1,
        tokens_per_second=tps,
        temperature_c=temp,
        throttled=False,
        shedding=False,
        rss_bytes=1000,
    )


def test_samples_in_one_bucket_are_averaged(tmp_path: Path) -> None:
    h = TelemetryHistory(tmp_path / "h.db")
    now = (time.time() // 60) * 60
    h.record(telemetry("a", now + 1, tps=10, temp=40, queue=2))
    h.record(telemetry("a", now + 30, tps=20, temp=None, queue=4))
    h.record(telemetry("b", now + 2, tps=99))
    assert h.series("a", "tokens_per_second", now - 3600) == [(now, 15.0)]
    assert h.series("a", "temperature_c", now - 3600) == [(now, 40.0)]  # the missing reading is not a zero
    assert h.series("a", "queue_depth", now - 3600) == [(now, 3.0)]
    assert set(h.all_series("a", now - 3600)) == set(METRICS)
    assert h.nodes() == ["a", "b"]


def test_series_are_ordered_and_start_at_since(tmp_path: Path) -> None:
    h = TelemetryHistory(tmp_path / "h.db")
    base = (time.time() // 60) * 60 - 10 * 60
    for i in (3, 1, 2, 0):
        h.record(telemetry("a", base + i * 60, tps=i))
    assert [v for _, v in h.series("a", "tokens_per_second", base + 60)] == [1.0, 2.0, 3.0]


def test_old_buckets_are_pruned(tmp_path: Path) -> None:
    h = TelemetryHistory(tmp_path / "h.db", bucket_s=60, retention_s=600)
    now = (time.time() // 60) * 60
    h.record(telemetry("a", now - 3600))
    h.record(telemetry("a", now))
    rows = h.db.execute("SELECT bucket FROM telemetry_buckets").fetchall()
    assert rows == [(int(now),)]


def test_history_survives_reopening(tmp_path: Path) -> None:
    h = TelemetryHistory(tmp_path / "h.db")
    now = time.time()
    h.record(telemetry("a", now, tps=7))
    h.close()
    again = TelemetryHistory(tmp_path / "h.db")
    assert [v for _, v in again.series("a", "tokens_per_second", now - 60)] == [7.0]


def test_unknown_metric_is_refused(tmp_path: Path) -> None:
    h = TelemetryHistory(tmp_path / "h.db")
    with pytest.raises(UnknownMetric, match="known: tokens_per_second"):
        h.series("a", "rss; DROP TABLE telemetry_buckets", 0)
