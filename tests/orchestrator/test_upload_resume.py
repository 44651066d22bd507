"""The artifact store's uploads across a restart: pieces are written without fsync, so pieces a crash
damaged (cut short, zeroed, a temporary file left) are found by their hash when the upload resumes,
reported missing, and asked for again; the blob is still checked whole before it exists."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.proto.payloads import UploadChunk

STEP = 1024


def piece(data: bytes, index: int) -> UploadChunk:
    part = base64.b64encode(data[index * STEP : (index + 1) * STEP]).decode()
    sha = hashlib.sha256(data).hexdigest()
    return UploadChunk(sha256=sha, size=len(data), chunk_bytes=STEP, index=index, data=part)


def test_pieces_a_crash_damaged_are_not_held_after_a_restart(tmp_path: Path) -> None:
    data = bytes(range(256)) * 16 + b"tail"  # five pieces, the last one short
    sha = hashlib.sha256(data).hexdigest()
    store = ArtifactStore(tmp_path)
    assert [store.put_upload(piece(data, i)) for i in range(4)] == [4, 3, 2, 1]
    assert store.put_upload(piece(data, 2)) == 1  # sent again: still one missing

    d = tmp_path / "uploads" / sha
    (d / "1").write_bytes(bytes((d / "1").stat().st_size))  # zeroed, its size kept (a power cut on XFS)
    (d / "2").write_bytes((d / "2").read_bytes()[:100])  # cut short
    (d / ".3.tmp").write_bytes(b"half a piece")  # a temporary piece never renamed
    restarted = ArtifactStore(tmp_path)
    assert restarted.missing_uploads(sha, len(data), STEP) == [1, 2, 4]
    assert sorted(p.name for p in d.iterdir()) == ["0", "3"]

    assert [restarted.put_upload(piece(data, i)) for i in (4, 1)] == [2, 1]
    assert restarted.put_upload(piece(data, 2)) == 0
    assert restarted.blob_path(sha).read_bytes() == data and not d.exists()
    assert restarted.missing_uploads(sha, len(data), STEP) == []
