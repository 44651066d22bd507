"""The orchestrator's artifact store: files by sha256, uploads in pieces, signed manifests.

Layout under the store's directory:
  uploads/<sha256>/<index>     pieces the CLI has sent so far (an upload resumes from them): each
                               piece's bytes then their sha256, written without fsync (checked on resume)
  blobs/<sha256>               complete, verified files
  manifests/<kind>/<name>.json the newest signed manifest per artifact name
  versions/<kind>/<name>/<v>.json every version's signed manifest (a rollback's chunks are still served)
Every file is written to a temporary name, fsynced and renamed, so a crash leaves no half file; the
pieces of an upload are not fsynced one by one (that was a quarter of an upload's time): the blob
joined from them is, with its directory, before it exists under its name, and a piece a crash damaged
is found by its hash when the upload resumes, and asked for again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

from edgefleet.plumbing.atomic_files import write_atomic
from edgefleet.proto.artifacts import ArtifactError, Manifest
from edgefleet.proto.payloads import UploadChunk

log = logging.getLogger("edgefleet.orchestrator.artifacts")

PIECE_MARK_BYTES = 32  # an uploaded piece on disk: its bytes, then their sha256


def _write_piece(path: Path, data: bytes) -> None:
    """Written to a temporary name and renamed (no half piece under its name), without fsync: the
    sha256 at its end tells a piece a crash damaged (`ArtifactStore._held_pieces`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("uploads", "blobs", "manifests"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # upload sha256 → (piece size, pieces known whole: `_held_pieces`); its entry goes at assembly
        self._uploads: dict[str, tuple[int, dict[int, bytes]]] = {}

    # -- uploads from the CLI --------------------------------------------------------------------------
    def put_upload(self, up: UploadChunk) -> int:
        """Keep one uploaded piece; when the file is complete and its sha256 matches, it becomes a blob.

        Returns how many pieces are still missing (0: the blob exists).
        """
        count = -(-up.size // up.chunk_bytes)
        if up.index >= count:
            raise ArtifactError(f"upload piece {up.index} is out of range (0..{count - 1})")
        try:
            data = base64.b64decode(up.data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ArtifactError(f"upload piece {up.index} is not base64: {e}") from e
        expected = up.chunk_bytes if up.index < count - 1 else up.size - up.chunk_bytes * up.index
        if len(data) != expected:
            raise ArtifactError(f"upload piece {up.index} is {len(data)} bytes, expected {expected}")
        if self.has_blob(up.sha256):
            return 0
        with self._lock:
            d = self.root / "uploads" / up.sha256
            d.mkdir(exist_ok=True)
            held = self._held_pieces(d, up.sha256, up.chunk_bytes, count, up.size)
            mark = hashlib.sha256(data).digest()
            if held.get(up.index) != mark:  # a piece sent again (a retry) is not written twice
                _write_piece(d / str(up.index), data + mark)
                held[up.index] = mark
            if len(held) < count:
                return count - len(held)
            if not all((d / str(i)).is_file() for i in range(count)):  # removed behind the store's back
                self._uploads.pop(up.sha256, None)
                return count - len(self._held_pieces(d, up.sha256, up.chunk_bytes, count, up.size))
            self._assemble(d, up.sha256, count, up.size)
            return 0

    def _held_pieces(self, d: Path, sha256: str, chunk_bytes: int, count: int, size: int) -> dict[int, bytes]:
        """index → sha256 of the pieces of upload `d` (of `chunk_bytes` each) known whole.

        Pieces are written without fsync, so those on disk from before this process started (an
        upload resumed after a restart or a power cut), or of another piece size, are checked once,
        here, against the hash each carries: one a crash cut short or zeroed is deleted and reported
        missing, never held."""
        cached = self._uploads.get(sha256)
        if cached is not None and cached[0] == chunk_bytes:
            return cached[1]
        held: dict[int, bytes] = {}
        for p in d.iterdir():
            if p.name.startswith("."):  # a temporary piece a crash left
                p.unlink(missing_ok=True)
                continue
            index = int(p.name) if p.name.isdigit() else -1
            if not 0 <= index < count:
                continue
            expected = chunk_bytes if index < count - 1 else size - chunk_bytes * index
            raw = p.read_bytes()
            if len(raw) == expected + PIECE_MARK_BYTES and hashlib.sha256(raw[:expected]).digest() == raw[expected:]:
                held[index] = raw[expected:]
            else:
                log.warning("uploaded piece damaged or of another size; it is asked for again", extra={"path": str(p)})
                p.unlink()
        self._uploads[sha256] = (chunk_bytes, held)
        return held

    def _assemble(self, d: Path, sha256: str, count: int, size: int) -> None:
        """The pieces joined, piece by piece, into a temporary file beside the blob (a model of hundreds
        of megabytes is never in memory whole), its sha256 checked, then fsynced, renamed to the blob and
        the directory fsynced: durable from here, and a crash before leaves no blob."""
        self._uploads.pop(sha256, None)
        digest = hashlib.sha256()
        blob = self.blob_path(sha256)
        fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=f".{blob.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                for i in range(count):
                    part = (d / str(i)).read_bytes()[:-PIECE_MARK_BYTES]
                    digest.update(part)
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            if digest.hexdigest() != sha256:
                shutil.rmtree(d)
                raise ArtifactError(f"the uploaded file's sha256 is {digest.hexdigest()}, not {sha256}; upload again")
            os.replace(tmp, blob)
            _fsync_dir(blob.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)
        shutil.rmtree(d)
        log.info("upload complete", extra={"sha256": sha256, "size_bytes": size})

    def missing_uploads(self, sha256: str, size: int, chunk_bytes: int) -> list[int]:
        if self.has_blob(sha256):
            return []
        count = -(-size // chunk_bytes)
        d = self.root / "uploads" / sha256
        if not d.is_dir():
            return list(range(count))
        with self._lock:
            held = self._held_pieces(d, sha256, chunk_bytes, count, size)
            return [i for i in range(count) if i not in held]

    # -- blobs and manifests ---------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def read_chunk(self, manifest: Manifest, index: int) -> bytes:
        with open(self.blob_path(manifest.sha256), "rb") as f:
            f.seek(index * manifest.chunk_bytes)
            return f.read(manifest.chunk_bytes)

    def save_manifest(self, manifest: Manifest, newest: bool = True) -> None:
        """Keep `manifest` as its version's, and (`newest`) as the newest of its name."""
        payload = manifest.model_dump_json().encode()
        write_atomic(self._version_path(manifest.kind, manifest.name, manifest.version), payload)
        if newest:
            d = self.root / "manifests" / manifest.kind
            d.mkdir(exist_ok=True)
            write_atomic(d / f"{manifest.name}.json", payload)

    def manifest(self, kind: str, name: str, version: str | None = None) -> Manifest | None:
        """The newest manifest of `name`, or (`version`) that version's, however old (a rollback
        to it still finds its chunks)."""
        newest = self.root / "manifests" / kind / f"{name}.json"
        found = Manifest.model_validate_json(newest.read_bytes()) if newest.exists() else None
        if version is None or (found is not None and found.version == version):
            return found
        p = self._version_path(kind, name, version)
        return Manifest.model_validate_json(p.read_bytes()) if p.exists() else None

    def _version_path(self, kind: str, name: str, version: str) -> Path:
        """versions/<kind>/<name>/<version>.json (outside manifests/: `manifests()` lists the newest only)."""
        return self.root / "versions" / kind / name / f"{quote(version, safe='')}.json"

    def manifests(self) -> list[Manifest]:
        out = []
        for p in sorted((self.root / "manifests").glob("*/*.json")):
            try:
                out.append(Manifest.model_validate_json(p.read_bytes()))
            except ValueError as e:
                log.error("stored manifest unreadable", extra={"path": str(p), "reason": str(e)})
        return out
