"""An artifact is hashed once on its way into a node: each chunk when it arrives, the whole file while
it is assembled; the digest of the assembly goes to the installer, which does not hash it again.

Real `ArtifactSync`, `ChunkStore` and node database over a temporary data directory; the installer
records what it is given. `hashlib.sha256` is wrapped to count the bytes hashed (the standard
library, not an edgefleet part).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.node.control.artifact_sync import ArtifactSync, Transfer
from edgefleet.node.control.chunk_store import ChunkStore
from edgefleet.node.control.desired_store import InstalledArtifact, InstalledArtifacts, open_node_db
from edgefleet.proto.artifacts import ArtifactError, Manifest, SiteKey, build_manifest
from edgefleet.proto.topics import Topics

T = Topics.for_site("lab")
SCOPE = T.artifact_scope("node", "n1")  # the node's own: where an artifact pushed to it is published
CHUNK = 1024
KEY = SiteKey.generate()


class FakeLink:
    """What ArtifactSync's chunk handler and install touch of the MQTT link."""

    def unsubscribe(self, topic: str) -> None:
        pass


class RecordingInstaller:
    kind = "adapter"
    suffix = ".gguf"

    def __init__(self) -> None:
        self.loaded: list[tuple[str, str, Path, str]] = []

    def precheck(self, m: Manifest) -> None:
        pass

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        self.loaded.append((name, version, path, sha256))

    def unload(self, name: str) -> None:
        pass


class HashedBytes:
    """Counts the bytes fed to every sha256 made while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        real = hashlib.sha256
        counter = self

        class Counting:
            def __init__(self, data: bytes = b"") -> None:
                self._h = real(data)
                counter.total += len(data)

            def update(self, data: bytes) -> None:
                counter.total += len(data)
                self._h.update(data)

            def hexdigest(self) -> str:
                return self._h.hexdigest()

        monkeypatch.setattr(hashlib, "sha256", Counting)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ArtifactSync, RecordingInstaller, Any]]:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    db = open_node_db(data_dir / "node.db")
    installer = RecordingInstaller()
    sync = ArtifactSync(
        node_id="n1",
        link=FakeLink(),  # type: ignore[arg-type]
        topics=T,
        installer=installer,
        installed=InstalledArtifacts(db),
        data_dir=data_dir,
        site_key=KEY.private.public_key(),
        report_error=lambda topic, code, message: pytest.fail(f"unexpected error report {code}: {message}"),
        changed=lambda: None,
    )
    yield sync, installer, db
    db.close()


def manifest_of(tmp_path: Path, content: bytes) -> Manifest:
    blob = tmp_path / "blob"
    blob.write_bytes(content)
    return KEY.sign(build_manifest(blob, "adapter", "lora1", "2.0", chunk_bytes=CHUNK))


def deliver(sync: ArtifactSync, m: Manifest, content: bytes) -> Transfer:
    t = Transfer(m, SCOPE, ChunkStore(sync.chunk_root, m), resumed_from=0)
    sync._transfers[m.name] = t
    for i in range(m.chunk_count):
        msg = mqtt.MQTTMessage(topic=T.artifact_chunk(SCOPE, "adapter", m.name, m.version, i).encode())
        msg.payload = content[i * CHUNK : (i + 1) * CHUNK]
        sync.on_chunk(msg)
    return t


def test_each_byte_is_hashed_once_as_a_chunk_and_once_in_the_whole_file(
    node: tuple[ArtifactSync, RecordingInstaller, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, installer, _ = node
    content = os.urandom(5 * CHUNK + 300)
    m = manifest_of(tmp_path, content)
    hashed = HashedBytes(monkeypatch)
    t = deliver(sync, m, content)
    assert t.store.complete() and hashed.total == len(content)  # every chunk checked once on arrival
    sync._install(t)
    assert t.state == "installed"
    assert hashed.total == 2 * len(content)  # and the whole file once, while it was assembled
    path = sync.install_dir / "lora1@2.0.gguf"
    assert installer.loaded == [("lora1", "2.0", path, m.sha256)]
    record = sync.installed.all("adapter")["lora1"]
    assert (record.sha256, record.size) == (m.sha256, len(content))


def test_a_chunk_held_already_is_verified_but_not_written_again(
    node: tuple[ArtifactSync, RecordingInstaller, Any], tmp_path: Path
) -> None:
    sync, _, _ = node
    content = os.urandom(2 * CHUNK)
    m = manifest_of(tmp_path, content)
    store = ChunkStore(sync.chunk_root, m)
    assert store.write(0, content[:CHUNK]) is True
    written = (store.dir / "0").stat().st_ino  # a write replaces the file (a new inode)
    assert store.write(0, content[:CHUNK]) is False
    assert (store.dir / "0").stat().st_ino == written
    tampered = bytes([content[0] ^ 1]) + content[1:CHUNK]
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        store.write(0, tampered)  # refused even though chunk 0 is held
    assert (store.dir / "0").read_bytes() == content[:CHUNK]


def test_at_start_an_installed_file_is_loaded_with_its_recorded_digest_and_a_truncated_one_forgotten(
    node: tuple[ArtifactSync, RecordingInstaller, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, installer, _ = node
    sync.install_dir.mkdir(parents=True)
    whole, cut = sync.install_dir / "a@1.gguf", sync.install_dir / "b@1.gguf"
    whole.write_bytes(b"x" * 100)
    cut.write_bytes(b"y" * 99)
    sync.installed.record(InstalledArtifact("adapter", "a", "1", "aa" * 32, whole, 100))
    sync.installed.record(InstalledArtifact("adapter", "b", "1", "bb" * 32, cut, 100))
    hashed = HashedBytes(monkeypatch)
    sync.load_installed()
    assert installer.loaded == [("a", "1", whole, "aa" * 32)]  # not hashed again: the digest recorded
    assert hashed.total == 0
    assert set(sync.installed.all("adapter")) == {"a"}  # b is fetched again
