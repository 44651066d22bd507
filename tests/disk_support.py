"""A small disk for fault tests: a tmpfs of a given size mounted on a directory, and a way to fill it.

Mounting needs root (the test machines and CI run as root). When the mount is impossible the
fixture fails loudly: a disk-full test that silently ran on a big disk would pass for nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """Mount a `size_mb` MiB tmpfs on `path` (created) for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"cannot mount a {size_mb} MiB tmpfs on {path} (run the tests as root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file into `path` until the disk has at most `leave_bytes` free; returns the file."""
    filler = path / "filler.bin"
    block = b"\0" * (1024 * 1024)
    with filler.open("ab", buffering=0) as f:
        while True:
            room = free_bytes(path) - leave_bytes
            if room <= 0:
                break
            try:
                f.write(block[: min(len(block), room)])
            except OSError:  # ENOSPC: full
                break
        os.fsync(f.fileno())
    return filler
