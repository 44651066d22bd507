"""The sensor ledger on real SQLite files: accept once, survive a kill, answer once, publish in order."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.sensors.ledger import SensorLedger
from edgefleet.node.sensors.stats import SensorStats

TOPIC = "sensors/m1/vibration"


def raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the file with a connection of its own, as another process would."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SensorLedger]:
    led = SensorLedger(tmp_path / "sensors.db", inbox_limit=5, outbox_limit=3, done_keep=4)
    yield led
    led.close()


def test_the_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    led = SensorLedger(tmp_path / "s.db")
    assert led._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    led.close()


def test_accept_new_then_duplicate_then_full(ledger: SensorLedger) -> None:
    assert ledger.accept("1", "r", TOPIC, b"a") == "new"
    assert ledger.accept("1", "r", TOPIC, b"a") == "duplicate"
    assert ledger.accept("1", "r", TOPIC, b"other payload, same id") == "duplicate"
    assert ledger.accept("1", "r2", TOPIC, b"a") == "new"  # another rule's work
    assert ledger.accept("1", "r", "sensors/m2/vibration", b"a") == "new"  # ids are per topic
    for i in range(2, 4):
        assert ledger.accept(str(i), "r", TOPIC, b"a") == "new"
    assert ledger.depths() == (5, 0)
    assert ledger.accept("9", "r", TOPIC, b"a") == "full"
    assert ledger.accept("1", "r", TOPIC, b"a") == "duplicate"  # a full inbox still drops redeliveries
    assert ledger.state("9", "r", TOPIC) is None
    assert ledger.state("1", "r", TOPIC) == "pending"


def test_done_rows_do_not_count_towards_the_inbox_limit(ledger: SensorLedger) -> None:
    for i in range(5):
        ledger.accept(str(i), "r", TOPIC, b"a")
    [row] = ledger.claim_pending(1)
    assert ledger.accept("x", "r", TOPIC, b"a") == "full"
    assert ledger.complete(row.seq, "out", b"answer")
    assert ledger.accept("x", "r", TOPIC, b"a") == "new"


def test_claim_marks_rows_running_oldest_first_and_counts_attempts(ledger: SensorLedger) -> None:
    for i in range(3):
        ledger.accept(f"m{i}", "r", TOPIC, f"p{i}".encode(), received_at=100.0 + i)
    rows = ledger.claim_pending(2)
    assert [(r.id, r.payload, r.received_at, r.attempts) for r in rows] == [
        ("m0", b"p0", 100.0, 1),
        ("m1", b"p1", 101.0, 1),
    ]
    assert ledger.state("m0", "r", TOPIC) == "running"
    assert ledger.accept("m0", "r", TOPIC, b"p0") == "duplicate"
    assert [r.id for r in ledger.claim_pending(10)] == ["m2"]
    assert ledger.claim_pending(10) == []
    assert ledger.release(rows[0].seq)
    assert not ledger.release(rows[0].seq)  # already pending
    [again] = ledger.claim_pending(10)
    assert (again.id, again.attempts) == ("m0", 2)
    assert ledger.depths() == (3, 0)


def test_complete_marks_done_and_queues_the_answer_once(ledger: SensorLedger) -> None:
    ledger.accept("m0", "r", TOPIC, b"payload")
    [row] = ledger.claim_pending(1)
    assert ledger.complete(row.seq, "answers/m0", b"answer")
    assert not ledger.complete(row.seq, "answers/m0", b"second answer")  # never answered twice
    assert not ledger.complete(12345, "answers/x", b"unknown row")
    [out] = ledger.outbox_batch(10)
    assert (out.source_id, out.topic, out.payload) == ("m0", "answers/m0", b"answer")
    assert ledger.state("m0", "r", TOPIC) == "done"
    assert ledger.accept("m0", "r", TOPIC, b"payload") == "duplicate"
    assert ledger.depths() == (0, 1)
    # a done row keeps only its key: no payload piles up in the dedupe window
    assert raw(ledger.path, "SELECT length(payload) FROM inbox") == [(0,)]


def test_complete_is_one_transaction(ledger: SensorLedger) -> None:
    """When the outbox insert fails, the inbox row is not done either (a trigger makes it fail)."""
    ledger.accept("m0", "r", TOPIC, b"payload")
    [row] = ledger.claim_pending(1)
    conn = sqlite3.connect(str(ledger.path))
    with conn:
        conn.execute("CREATE TRIGGER fail BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        ledger.complete(row.seq, "answers/m0", b"answer")
    assert ledger.state("m0", "r", TOPIC) == "running"
    assert ledger.depths() == (1, 0)
    with conn:
        conn.execute("DROP TRIGGER fail")
    conn.close()
    assert ledger.complete(row.seq, "answers/m0", b"answer")
    assert raw(ledger.path, "SELECT i.state, o.source_id FROM inbox i, outbox o") == [("done", "m0")]


def test_outbox_order_deletion_and_backpressure(ledger: SensorLedger) -> None:
    for i in range(5):
        ledger.accept(f"m{i}", "r", TOPIC, b"p")
    for row in ledger.claim_pending(3):
        ledger.complete(row.seq, f"answers/{row.id}", row.id.encode())
    assert ledger.outbox_full()
    assert ledger.claim_pending(10) == []  # no new work while the outbox is full
    batch = ledger.outbox_batch(10)
    assert [b.payload for b in batch] == [b"m0", b"m1", b"m2"]
    assert [b.seq for b in batch] == sorted(b.seq for b in batch)
    assert ledger.outbox_delete(batch[1].seq)
    assert not ledger.outbox_delete(batch[1].seq)
    assert not ledger.outbox_full()
    assert [b.payload for b in ledger.outbox_batch(1)] == [b"m0"]
    assert [b.payload for b in ledger.outbox_batch(10)] == [b"m0", b"m2"]
    assert ledger.depths() == (2, 2)
    assert [r.id for r in ledger.claim_pending(10)] == ["m3", "m4"]


def test_done_rows_still_dedupe_after_reopen_and_the_outbox_survives(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = SensorLedger(path)
    led.accept("m0", "r", TOPIC, b"p")
    led.accept("m1", "r", TOPIC, b"p")
    [row, _] = led.claim_pending(2)
    led.complete(row.seq, "answers/m0", b"answer")
    led.close()
    led = SensorLedger(path)
    assert led.accept("m0", "r", TOPIC, b"p") == "duplicate"
    assert led.state("m0", "r", TOPIC) == "done"
    assert led.state("m1", "r", TOPIC) == "pending"  # was running when closed
    assert led.depths() == (1, 1)
    assert [o.payload for o in led.outbox_batch(10)] == [b"answer"]
    led.close()


def test_done_rows_are_pruned_oldest_first(ledger: SensorLedger) -> None:
    for i in range(7):
        ledger.accept(f"m{i}", "r", TOPIC, b"p")
        [row] = ledger.claim_pending(1)
        ledger.complete(row.seq, "answers", b"a")
        ledger.outbox_delete(ledger.outbox_batch(1)[0].seq)
    assert raw(ledger.path, "SELECT id FROM inbox ORDER BY seq") == [("m3",), ("m4",), ("m5",), ("m6",)]
    assert ledger.accept("m6", "r", TOPIC, b"p") == "duplicate"
    assert ledger.accept("m0", "r", TOPIC, b"p") == "new"  # beyond the window: accepted again


def test_reopening_with_a_smaller_window_prunes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = SensorLedger(path)
    for i in range(5):
        led.accept(f"m{i}", "r", TOPIC, b"p")
    for row in led.claim_pending(5):
        led.complete(row.seq, "answers", b"a")
    led.close()
    led = SensorLedger(path, done_keep=2)
    assert raw(path, "SELECT id FROM inbox ORDER BY seq") == [("m3",), ("m4",)]
    led.close()


CRASHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edgefleet.node.sensors.ledger import SensorLedger

    led = SensorLedger(Path(sys.argv[1]), inbox_limit=1_000_000)
    i = 0
    while True:
        assert led.accept(f"m{i}", "r", "sensors/m1/vibration", b"x" * 200) == "new"
        if i % 3 == 0:
            led.claim_pending(1)
        print(f"m{i}", flush=True)  # the ack: after this line the message is the ledger's
        i += 1
    """
)


def test_accepted_messages_survive_sigkill_and_running_rows_resume(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = [proc.stdout.readline().strip() for _ in range(150)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    states = {str(msg_id): state for msg_id, state in raw(path, "SELECT id, state FROM inbox")}
    assert set(acked) <= set(states)
    assert "running" in states.values()
    led = SensorLedger(path, inbox_limit=1_000_000)
    for msg_id in acked:
        assert led.state(msg_id, "r", TOPIC) == "pending"
        assert led.accept(msg_id, "r", TOPIC, b"x" * 200) == "duplicate"
    rows = led.claim_pending(1_000_000)
    assert [r.id for r in rows][: len(acked)] == acked
    assert rows[0].attempts == 2  # m0 was claimed once before the kill
    led.close()


def test_threads_share_one_ledger(tmp_path: Path) -> None:
    led = SensorLedger(tmp_path / "s.db", inbox_limit=1000)
    results: list[str] = []

    def accept() -> None:
        for i in range(50):
            results.append(led.accept(f"m{i}", "r", TOPIC, b"p"))  # every worker sends the same ids

    def work() -> None:
        for _ in range(100):
            for row in led.claim_pending(5):
                led.complete(row.seq, "answers", row.id.encode())

    threads = [threading.Thread(target=accept) for _ in range(4)] + [threading.Thread(target=work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for row in led.claim_pending(1000):
        led.complete(row.seq, "answers", row.id.encode())
    assert results.count("new") == 50
    assert sorted(o.payload for o in led.outbox_batch(1000)) == sorted(f"m{i}".encode() for i in range(50))
    assert led.depths() == (0, 50)
    led.close()


def test_stats_count_per_rule_with_a_median_latency() -> None:
    stats = SensorStats(window=3)
    for _ in range(3):
        stats.message_in("r")
    stats.message_in("r", duplicate=True)
    stats.error("r")
    for ms in (100.0, 10.0, 30.0, 20.0):  # the first falls out of the window
        stats.answered("r", ms)
    stats.message_in("q")
    snap = stats.snapshot()
    assert list(snap) == ["q", "r"]
    r = snap["r"]
    assert (r.messages_in, r.duplicates, r.answered, r.errors, r.latency_p50_ms) == (4, 1, 4, 1, 20.0)
    assert snap["q"].latency_p50_ms is None


def test_a_release_that_was_no_try_does_not_count_as_an_attempt(ledger: SensorLedger) -> None:
    ledger.accept("m0", "r", TOPIC, b"p")
    [row] = ledger.claim_pending(1)
    assert row.attempts == 1
    assert ledger.release(row.seq, tried=False)  # the engine was busy: not a try
    [again] = ledger.claim_pending(1)
    assert again.attempts == 1 and ledger.attempts("m0", "r", TOPIC) == 1
    assert ledger.release(again.seq, tried=True)  # it failed: a try
    [third] = ledger.claim_pending(1)
    assert third.attempts == 2 and ledger.attempts("m0", "r", TOPIC) == 2
    assert ledger.attempts("unknown", "r", TOPIC) is None
