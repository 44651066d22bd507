"""The sensor ledger on a real full disk (a 2 MiB tmpfs): StorageFull naming the store and the free space."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.node.errors import StorageFull
from edgefleet.node.sensors.ledger import SensorLedger
from tests.disk_support import fill, small_disk


def test_accept_on_a_full_disk_raises_storage_full_and_records_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "sd", 2) as disk:
        ledger = SensorLedger(disk / "sensors.db")
        try:
            assert ledger.accept("a", "r", "t/1", b"x") == "new"
            filler = fill(disk)
            with pytest.raises(StorageFull) as e:
                for i in range(200):  # the WAL has some room of its own: write until it is gone
                    ledger.accept(f"m{i}", "r", "t/1", b"y" * 8000)
            assert "sensor ledger" in str(e.value) and "free of" in str(e.value)
            opened = ledger.depths()[0]
            filler.unlink()
            assert ledger.accept("after", "r", "t/1", b"z") == "new"
            assert ledger.depths()[0] == opened + 1
        finally:
            ledger.close()
