"""A small reserve file beside a store, given up when the disk is full so deletions can still commit.

Deleting rows writes first (WAL frames, FTS5 tombstones, freelist pages), so on a disk with no
byte left even a delete fails with SQLITE_FULL. The store keeps `<db>.reserve` (8 MiB by default)
and removes it when a deletion hits a full disk, then tries once more; the reserve is made again
when there is room for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("edgefleet.node.knowledge")

# Room for a checkpoint of a full WAL (SQLite checkpoints at 1000 pages, 4 MiB) and a deletion.
DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024


class SpaceReserve:
    def __init__(self, path: Path, size: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path, self.size = path, size
        self.restore()

    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def restore(self) -> bool:
        """Make the reserve when it is missing and the disk has room for it and as much again."""
        if self.size <= 0 or self.held():
            return self.size <= 0 or self.held()
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.size:
                return False
            with self.path.open("wb") as f:
                f.write(b"\0" * self.size)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.path.unlink(missing_ok=True)
            log.debug("space reserve not made", extra={"path": str(self.path), "reason": str(e)})
            return False
        return True

    def release(self) -> bool:
        """Give the reserve to the disk; False when there was none."""
        if not self.path.exists():
            return False
        self.path.unlink(missing_ok=True)
        log.warning("disk full: space reserve released for a deletion", extra={"path": str(self.path)})
        return True
