"""The orchestrator's artifact store: files by sha256, uploads in pieces, signed manifests.

Layout under the store's directory:
  uploads/<sha256>/<index>     pieces the CLI has sent so far (an upload resumes from them)
  blobs/<sha256>               complete, verified files
  manifests/<kind>/<name>.json the newest signed manifest per artifact name
  versions/<kind>/<name>/<v>.json every version's signed manifest (a rollback's chunks are still served)
Every file is written to a temporary name, fsynced and renamed, so a crash leaves no half file.
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


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("uploads", "blobs", "manifests"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

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
            write_atomic(d / str(up.index), data)
            have = {p.name for p in d.iterdir() if p.name.isdigit()}
            missing = count - len({str(i) for i in range(count)} & have)
            if missing:
                return missing
            # joined piece by piece into a temporary file beside the blob: a model of hundreds of
            # megabytes is never in memory whole
            digest = hashlib.sha256()
            blob = self.blob_path(up.sha256)
            fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=f".{blob.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    for i in range(count):
                        part = (d / str(i)).read_bytes()
                        digest.update(part)
                        f.write(part)
                    f.flush()
                    os.fsync(f.fileno())
                if digest.hexdigest() != up.sha256:
                    shutil.rmtree(d)
                    raise ArtifactError(
                        f"the uploaded file's sha256 is {digest.hexdigest()}, not {up.sha256}; upload again"
                    )
                os.replace(tmp, blob)
            finally:
                Path(tmp).unlink(missing_ok=True)
            shutil.rmtree(d)
            log.info("upload complete", extra={"sha256": up.sha256, "size_bytes": up.size})
            return 0

    def missing_uploads(self, sha256: str, size: int, chunk_bytes: int) -> list[int]:
        if self.has_blob(sha256):
            return []
        d = self.root / "uploads" / sha256
        have = {p.name for p in d.iterdir()} if d.exists() else set()
        return [i for i in range(-(-size // chunk_bytes)) if str(i) not in have]

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
