"""Signed manifests and chunk checks (pure: no broker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.proto.artifacts import ArtifactError, SiteKey, build_manifest, load_public_key, verify


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    p = tmp_path / "a.gguf"
    p.write_bytes(os.urandom(300_000))
    return p


def test_signed_manifest_verifies_with_the_pinned_key_only(blob: Path, tmp_path: Path) -> None:
    key = SiteKey.generate()
    key.save(tmp_path / "site.key", tmp_path / "site.pub")
    pinned = load_public_key(tmp_path / "site.pub")
    m = key.sign(build_manifest(blob, "adapter", "alarm", "1", chunk_bytes=128 * 1024))
    assert m.chunk_count == 3
    verify(m, pinned)
    assert SiteKey.load(tmp_path / "site.key").sign(m) == m, "Ed25519 signatures are deterministic"
    with pytest.raises(ArtifactError, match="not signed"):
        verify(m.model_copy(update={"signature": ""}), pinned)
    with pytest.raises(ArtifactError, match="does not verify"):
        verify(m.model_copy(update={"size": m.size + 1}), pinned)
    with pytest.raises(ArtifactError, match="does not verify"):
        verify(SiteKey.generate().sign(m), pinned)
    with pytest.raises(ArtifactError, match="does not verify"):
        verify(m.model_copy(update={"signature": "not base64!"}), pinned)


def test_chunks_are_checked_for_range_size_and_hash(blob: Path) -> None:
    m = build_manifest(blob, "adapter", "alarm", "1", chunk_bytes=128 * 1024)
    data = blob.read_bytes()
    chunks = [data[i : i + m.chunk_bytes] for i in range(0, len(data), m.chunk_bytes)]
    for i, c in enumerate(chunks):
        m.check_chunk(i, c)
    with pytest.raises(ArtifactError, match="out of range"):
        m.check_chunk(3, chunks[0])
    with pytest.raises(ArtifactError, match="bytes, expected"):
        m.check_chunk(2, chunks[0])
    tampered = bytearray(chunks[1])
    tampered[10] ^= 0xFF
    with pytest.raises(ArtifactError, match="tampered"):
        m.check_chunk(1, bytes(tampered))


def test_names_with_path_separators_are_refused(blob: Path) -> None:
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(ValueError, match="invalid"):
            build_manifest(blob, "adapter", bad, "1")
