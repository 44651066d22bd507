"""Chunks of one artifact on the node's disk, kept across disconnects and restarts.

`<data_dir>/artifacts/<sha256>/<index>` holds each verified chunk (written to a temporary name,
fsynced, renamed), so a transfer resumes from what is on disk. `assemble` joins them into the
final file the same way and checks the whole file's size and sha256 before the rename.

Each byte is hashed once per check: a chunk when it arrives (`write`, against the signed manifest's
chunk hash), the whole file while it is joined (`assemble`, against the manifest's sha256; the chunks
were on disk since, so this is the check that counts). The digest `assemble` returns is passed on to
whatever puts the file into service, which does not hash it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgefleet.proto.artifacts import ArtifactError, Manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AssembledFile:
    """A file joined from verified chunks whose size and sha256 were checked against the manifest."""

    path: Path
    sha256: str  # computed while joining: the one hash of the whole file on this node
    size: int


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

    def write(self, index: int, data: bytes) -> bool:
        """Verify one chunk as it arrives (index, size, sha256 from the signed manifest; ArtifactError) and
        keep it; False when it is held already (nothing written). Tampered data is refused even then."""
        self.manifest.check_chunk(index, data)
        if index in self._held:
            return False
        tmp = self.dir / f"{index}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / str(index))
        self._held.add(index)
        return True

    def assemble(self, dest: Path) -> AssembledFile:
        """Join the chunks into `dest` atomically, hashing as they go; ArtifactError when the whole does not match."""
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
        return AssembledFile(dest, digest.hexdigest(), size)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._held = set()
