"""Chunks of one artifact on the node's disk, kept across disconnects and restarts.

`<data_dir>/artifacts/<sha256>/<index>` holds each verified chunk (written to a temporary name,
fsynced, renamed), so a transfer resumes from what is on disk. `assemble` joins them into the
final file the same way and checks the whole file's size and sha256 before the rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from edgefleet.proto.artifacts import ArtifactError, Manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkStore:
    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self.dir = root / manifest.sha256
        self.dir.mkdir(parents=True, exist_ok=True)
        names = (p.name for p in self.dir.iterdir())
        self._held = {int(n) for n in names if n.isdigit() and int(n) < manifest.chunk_count}

    def held(self) -> set[int]:
        return set(self._held)

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.chunk_count) if i not in self._held]

    def complete(self) -> bool:
        return len(self._held) == self.manifest.chunk_count

    def has(self, index: int) -> bool:
        return index in self._held

    def write(self, index: int, data: bytes) -> None:
        """Verify (index, size, sha256 from the signed manifest) and keep one chunk."""
        self.manifest.check_chunk(index, data)
        tmp = self.dir / f"{index}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / str(index))
        self._held.add(index)

    def assemble(self, dest: Path) -> Path:
        """Join the chunks into `dest` atomically; raises ArtifactError when the whole does not match."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for i in range(self.manifest.chunk_count):
                    data = (self.dir / str(i)).read_bytes()
                    digest.update(data)
                    size += len(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError:  # a chunk gone from disk, a full disk: no half file stays behind
            tmp.unlink(missing_ok=True)
            raise
        if size != self.manifest.size or digest.hexdigest() != self.manifest.sha256:
            tmp.unlink(missing_ok=True)
            self.discard()
            raise ArtifactError(
                f"{self.manifest.label}: the assembled file is {size} bytes with sha256 {digest.hexdigest()}, "
                f"the manifest says {self.manifest.size} bytes, {self.manifest.sha256}"
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return dest

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._held = set()
