"""Property-based: signed artifact manifests and uploads against mutations, path tricks and bad chunks.

Unit level over real files in temporary directories and the node's real SQLite database, with the
real code on both sides: the orchestrator's `ArtifactStore` (uploads, blobs, manifests), the site
key's signatures, the node's `ArtifactSync` (manifest and chunk handlers, install) and `ChunkStore`.

- Mutations: any single-field change of a validly signed manifest (kind, name, version, size,
  sha256, chunk size, chunk hashes dropped/added/replaced/reordered, base model fit, the
  signature's bytes, the signature's text, signed by another key, the contract version, an extra
  field) is refused with a typed error: a pydantic `ValidationError` at parsing or an
  `ArtifactError` at verification, and the node reports it as `manifest_refused` or
  `bad_signature` and keeps nothing. A change accepted is one that does not change the signed
  meaning (e.g. `1.0` for `1`). Never another exception.
- Path tricks (`../`, absolute paths, NUL, backslashes, dot segments, very long, unicode
  look-alikes, empty) as artifact name, version or file id (sha256), through the whole path:
  upload → blob → signed manifest → node (even a manifest the site key signed with a tricky
  name or version is refused by the node's validation). After every case each file under the
  temporary root is where the layout says: `uploads/<sha256>/<n>`, `blobs/<sha256>`,
  `manifests/<kind>/<name>.json` in the store, `artifacts/<sha256>/<n>`, `adapters/<name>@<version>.gguf`
  and the database on the node; nothing anywhere else.
- Chunks: random sequences of good chunks, chunks out of range, of the wrong size, with the wrong
  hash, duplicates, on a wrong topic, and chunk files tampered with or deleted on disk: each bad
  one is refused with a typed error report, the installed file does not exist until every chunk
  is right, and then its sha256 is the manifest's; a corrupt or missing chunk on disk leaves no
  file (nor a temporary one) behind.

Cases: 250 (mutations) + 150 (path tricks) + 150 (chunk sequences) = 550.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.node.control.artifact_sync import ArtifactSync, Transfer
from edgefleet.node.control.chunk_store import ChunkStore
from edgefleet.node.control.desired_store import InstalledArtifacts, open_node_db
from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.proto.artifacts import ArtifactError, Manifest, SiteKey, build_manifest, verify
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import UploadChunk
from edgefleet.proto.topics import Topics

T = Topics.for_site("lab")
SCOPE = T.artifact_scope("node", "n1")  # the test node's own scope
CHUNK = 1024
KEY = SiteKey.generate()
OTHER_KEY = SiteKey.generate()
PUB = KEY.private.public_key()
SHA = r"[0-9a-f]{64}"
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
VERSION = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}"
STORE_LAYOUT = re.compile(
    rf"(uploads/{SHA}/\d+|blobs/{SHA}|manifests/(adapter|knowledge|model)/{NAME}\.json"
    rf"|versions/(adapter|knowledge|model)/{NAME}/[A-Za-z0-9._%-]{{1,96}}\.json)"  # every version's manifest
)
NODE_LAYOUT = re.compile(rf"(artifacts/{SHA}/\d+|adapters/{NAME}@{VERSION}\.gguf|node\.db(-wal|-shm)?)")
_cases = itertools.count()


class FakeLink:
    """What ArtifactSync's handlers and install touch of the MQTT link."""

    def subscribe(self, topic: str, handler: object, qos: int = 1) -> None:
        pass

    def unsubscribe(self, topic: str) -> None:
        pass


class Installer:
    kind = "adapter"
    suffix = ".gguf"

    def __init__(self) -> None:
        self.loaded: list[tuple[str, str, bytes]] = []

    def precheck(self, m: Manifest) -> None:
        pass

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        self.loaded.append((name, version, path.read_bytes()))

    def unload(self, name: str) -> None:
        pass


class Node:
    """A node's artifact sync over a real data directory and database; error reports collected."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)
        self.db = open_node_db(data_dir / "node.db")
        self.reports: list[tuple[str, str, str]] = []
        self.installer = Installer()
        self.sync = ArtifactSync(
            node_id="n1",
            link=FakeLink(),  # type: ignore[arg-type]
            topics=T,
            installer=self.installer,
            installed=InstalledArtifacts(self.db),
            data_dir=data_dir,
            site_key=PUB,
            report_error=lambda topic, code, message: self.reports.append((topic, code, message)),
            changed=lambda: None,
        )
        self.sync.set_groups([])  # it reads its own scope (SCOPE): artifacts pushed to node n1

    def close(self) -> None:
        self.db.close()

    def codes(self) -> list[str]:
        return [code for _, code, _ in self.reports]

    def manifest(self, topic: str, payload: bytes) -> None:
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload = payload
        self.sync.on_manifest(msg)

    def chunk(self, topic: str, data: bytes) -> None:
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload = data
        self.sync.on_chunk(msg)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifact-props")


@pytest.fixture(scope="module")
def signed(base: Path) -> Manifest:
    path = base / "adapter.bin"
    path.write_bytes(bytes(range(256)) * 17 + b"tail")  # 4356 bytes: 5 chunks of 1 KiB
    return KEY.sign(
        build_manifest(
            path, "adapter", "lora1", "1.0.0", chunk_bytes=CHUNK, base_architecture="llama", base_tensors={"t": [4, 4]}
        )
    )


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# -- mutations of a signed manifest -------------------------------------------------------------------------
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
junk = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=80)
junk = junk | st.lists(junk, max_size=3) | st.dictionaries(st.text(max_size=8), junk, max_size=3)


def flip_bit(b: bytes, i: int) -> bytes:
    i %= len(b) * 8
    return b[: i // 8] + bytes([b[i // 8] ^ (1 << (i % 8))]) + b[i // 8 + 1 :]


@st.composite
def mutation(draw: st.DrawFn, m: Manifest) -> tuple[str, dict[str, Any] | bytes]:
    """(what changed, the manifest's wire form with one field changed, or bytes signed by another key)."""
    doc: dict[str, Any] = json.loads(m.model_dump_json())
    field = draw(
        st.sampled_from(
            [
                "v",
                "kind",
                "name",
                "version",
                "size",
                "sha256",
                "chunk_bytes",
                "chunk_sha256",
                "base_architecture",
                "base_tensors",
                "signature_bytes",
                "signature_text",
                "other_key",
                "extra",
                "drop",
            ]
        )
    )
    if field == "other_key":
        return field, OTHER_KEY.sign(m).model_dump_json().encode()
    if field == "extra":
        doc[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in doc) | st.just("key_id"))] = draw(junk)
        return field, doc
    if field == "drop":
        del doc[draw(st.sampled_from(sorted(doc)))]
        return field, doc
    if field == "signature_bytes":
        sig = base64.b64decode(doc["signature"])
        how = draw(st.sampled_from(["flip", "truncate", "extend", "random"]))
        if how == "flip":
            sig = flip_bit(sig, draw(st.integers(0, 511)))
        elif how == "truncate":
            sig = sig[: draw(st.integers(0, 63))]
        elif how == "extend":
            sig += draw(st.binary(min_size=1, max_size=8))
        else:
            sig = draw(st.binary(min_size=64, max_size=64).filter(lambda s: s != sig))
        doc["signature"] = base64.b64encode(sig).decode()
        return field, doc
    if field == "signature_text":
        doc["signature"] = draw(
            st.sampled_from(["", " ", "=", doc["signature"] + "=", doc["signature"][:-4], doc["signature"] + "\n"])
            | st.text(max_size=100)
            | junk
        )
        return field, doc
    if field == "chunk_sha256":
        hashes: list[str] = doc["chunk_sha256"]
        how = draw(st.sampled_from(["drop", "add", "replace", "swap", "other"]))
        i = draw(st.integers(0, len(hashes) - 1))
        if how == "drop":
            del hashes[i]
        elif how == "add":
            hashes.insert(i, draw(hexes))
        elif how == "replace":
            hashes[i] = draw(hexes.filter(lambda h: h != hashes[i]))
        elif how == "swap":
            j = (i + draw(st.integers(1, len(hashes) - 1))) % len(hashes)
            hashes[i], hashes[j] = hashes[j], hashes[i]
        else:
            doc["chunk_sha256"] = draw(junk)
        return field, doc
    original = doc.get(field)
    values = {
        "v": st.sampled_from([0, 2, "1", "", None]) | junk,
        "kind": st.sampled_from(["knowledge", "Adapter", "adapter ", "model", ""]) | junk,
        "name": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z") | junk,
        "version": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,10}\Z") | junk,
        "size": st.integers(-(2**40), 2**40) | junk,
        "sha256": hexes | junk,
        "chunk_bytes": st.integers(-(2**30), 2**30) | junk,
        "base_architecture": st.text(max_size=20) | junk,
        "base_tensors": st.dictionaries(st.text(max_size=8), st.lists(st.integers(0, 9), max_size=3), max_size=3),
    }[field]
    doc[field] = draw(values.filter(lambda x: x != original))
    return field, doc


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_field_mutation_of_a_signed_manifest_is_refused(
    signed: Manifest, base: Path, data: st.DataObject
) -> None:
    field, changed = data.draw(mutation(signed))
    payload = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    try:
        m = Manifest.model_validate_json(payload)
        verify(m, PUB)
    except (ValidationError, ArtifactError):
        pass
    else:  # accepted: only when the signed meaning is the same (a number written another way, say)
        assert m.canonical() == signed.canonical(), f"{field}: an altered manifest verified: {payload!r}"
        assert field not in ("signature_bytes", "other_key")
    node = Node(base / f"mutation-{next(_cases)}")
    try:
        node.manifest(T.artifact_manifest(SCOPE, "adapter", "lora1"), payload)
        if node.reports:
            assert node.codes() in ([ErrorCode.MANIFEST_REFUSED], [ErrorCode.BAD_SIGNATURE]), node.reports
            assert not node.sync._manifests
        else:
            assert node.sync._manifests["lora1"][SCOPE].canonical() == signed.canonical()
    finally:
        node.close()


def test_the_unchanged_manifest_verifies(signed: Manifest, base: Path) -> None:
    verify(Manifest.model_validate_json(signed.model_dump_json()), PUB)
    node = Node(base / "unchanged")
    node.manifest(T.artifact_manifest(SCOPE, "adapter", "lora1"), signed.model_dump_json().encode())
    assert not node.reports and node.sync._manifests["lora1"] == {SCOPE: signed}
    node.close()


# -- path tricks ----------------------------------------------------------------------------------------------
def tricks(escape: Path) -> st.SearchStrategy[str]:
    fixed = [
        "..",
        ".",
        "",
        " ",
        "../escaped",
        "../../../escaped",
        "a/../../escaped",
        "./a",
        "a/b",
        "a\\..\\..\\escaped",
        "..\\escaped",
        "a\x00b",
        "\x00",
        "a\n",
        str(escape),
        str(escape / ".." / "escaped2"),
        "/etc/passwd",
        "~/escaped",
        "%2e%2e%2fescaped",
        "\u2215escaped",
        "\uff0e\uff0e\uff0fescaped",
        "l\u0131ra",
        "e\u0301",
        "名前",
        "a" * 65,
        "a" * 300,
        "1" * 33,
        "a..b",
        "a.",
        "-a",
        ".hidden",
        "a@b",
        "a:b",
        "CON",
        "a+b",
        "a*",
        "#",
        "+",
    ]
    piece = st.sampled_from(fixed)
    return (
        piece
        | st.builds(lambda a, b, c: a + b + c, st.sampled_from(["", "a", "1.0", "x-"]), piece, piece)
        | st.text(max_size=70)
    )


@st.composite
def tricky_case(draw: st.DrawFn, escape: Path) -> tuple[str, str, str, str | None]:
    """(where the trick goes, name, version, sha256 override)."""
    where = draw(st.sampled_from(["name", "version", "sha256", "signed-name", "signed-version", "valid"]))
    name, version, sha = "lora1", "1.0", None
    trick = draw(tricks(escape))
    if where in ("name", "signed-name"):
        name = trick
    elif where in ("version", "signed-version"):
        version = trick
    elif where == "sha256":
        sha = trick
    else:
        name = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda n: ".." not in n))
        version = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,31}\Z"))
    return where, name, version, sha


def upload(store: ArtifactStore, data: bytes, sha256: str) -> None:
    for i in range(0, len(data), CHUNK):
        doc = {
            "sha256": sha256,
            "size": len(data),
            "chunk_bytes": CHUNK,
            "index": i // CHUNK,
            "data": base64.b64encode(data[i : i + CHUNK]).decode(),
        }
        store.put_upload(UploadChunk.model_validate(doc))


def check_layout(base: Path, root: Path) -> None:
    """Every file under `base` is where the store's and the node's layouts put it, under `root`."""
    for rel in files_under(base):
        path = base / rel
        assert path.is_relative_to(root), f"written outside the case directory: {path}"
        inner = path.relative_to(root)
        assert re.fullmatch(r"case-\d+", inner.parts[0]), f"a file outside the case directories: {inner}"
        side, rest = inner.parts[1], "/".join(inner.parts[2:])
        layout = {"store": STORE_LAYOUT, "node": NODE_LAYOUT}.get(side)
        assert layout is not None and layout.fullmatch(rest), f"a file outside the layout: {inner}"


@pytest.fixture(scope="module")
def outer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifact-tricks")


@pytest.fixture(scope="module")
def tricks_base(outer: Path) -> Path:
    # deep, so a `../` too many still lands under `outer`, where it is seen
    root = outer / "a" / "b" / "c" / "d" / "e" / "f"
    root.mkdir(parents=True)
    return root


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_path_tricks_are_refused_and_nothing_is_written_outside(
    outer: Path, tricks_base: Path, data: st.DataObject
) -> None:
    escape = outer / "escaped"
    where, name, version, sha_override = data.draw(tricky_case(escape))
    root = tricks_base / f"case-{next(_cases)}"
    store, node = ArtifactStore(root / "store"), Node(root / "node")
    content = data.draw(st.binary(min_size=1, max_size=3 * CHUNK))
    sha = hashlib.sha256(content).hexdigest()
    try:
        try:
            upload(store, content, sha_override if sha_override is not None else sha)
        except (ValidationError, ArtifactError):
            assert where == "sha256", f"a valid upload refused ({where})"
            assert not store.has_blob(sha)
            return
        if where.startswith("signed-"):  # the site key signed a manifest no orchestrator builds: nodes refuse it
            unchecked = build_manifest(store.blob_path(sha), "adapter", "lora1", "1.0", chunk_bytes=CHUNK)
            m = KEY.sign(unchecked.model_copy(update={"name": name, "version": version}))
            payload = m.model_dump_json().encode()
            try:
                Manifest.model_validate_json(payload)
            except ValidationError:
                valid = False
            else:
                valid = True
            node.manifest(T.artifact_manifest(SCOPE, "adapter", name), payload)
            node.manifest(T.artifact_manifest(SCOPE, "adapter", "lora1"), payload)
            if not valid:
                assert node.codes() == [ErrorCode.MANIFEST_REFUSED] * 2 and not node.sync._manifests, node.reports
            else:  # the trick happens to be a fine name or version: accepted on its own topic only
                assert set(node.sync._manifests) == {name}
                assert node.codes() == ([] if name == "lora1" else [ErrorCode.MANIFEST_REFUSED]), node.reports
            return
        try:
            m = KEY.sign(build_manifest(store.blob_path(sha), "adapter", name, version, chunk_bytes=CHUNK))
        except ValidationError:
            assert where in ("name", "version"), f"a valid manifest refused ({where})"
            return
        store.save_manifest(m)
        node.manifest(T.artifact_manifest(SCOPE, "adapter", m.name), m.model_dump_json().encode())
        assert not node.reports, node.reports
        t = Transfer(m, SCOPE, ChunkStore(node.sync.chunk_root, m), resumed_from=0)
        node.sync._transfers[m.name] = t
        for i in range(m.chunk_count):
            node.chunk(T.artifact_chunk(SCOPE, "adapter", m.name, m.version, i), store.read_chunk(m, i))
        node.sync._install(t)
        assert t.state == "installed" and not node.reports, node.reports
        assert node.installer.loaded == [(m.name, m.version, content)]
        installed = node.sync.installed.all("adapter")[m.name]
        assert installed.path.parent == root / "node" / "adapters" and installed.path.read_bytes() == content
    finally:
        node.close()
        check_layout(outer, tricks_base)
        assert not escape.exists()


# -- chunks --------------------------------------------------------------------------------------------------
OPS = ["good", "wrong_size", "wrong_hash", "out_of_range", "negative", "duplicate", "other_version", "bad_topic"]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.binary(min_size=1, max_size=5 * CHUNK + 100),
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10**6)), max_size=14),
    disk=st.sampled_from(["intact"] * 4 + ["tampered", "truncated", "deleted"]),
)
def test_bad_chunks_are_refused_and_the_file_appears_only_when_whole(
    base: Path, content: bytes, ops: list[tuple[str, int]], disk: str
) -> None:
    root = base / f"chunks-{next(_cases)}"
    blob = root / "blob"
    root.mkdir()
    blob.write_bytes(content)
    m = KEY.sign(build_manifest(blob, "adapter", "lora1", "2.0", chunk_bytes=CHUNK))
    chunks = [content[i : i + CHUNK] for i in range(0, len(content), CHUNK)]
    node = Node(root / "node")
    t = Transfer(m, SCOPE, ChunkStore(node.sync.chunk_root, m), resumed_from=0)
    node.sync._transfers[m.name] = t
    dest = node.sync.install_dir / "lora1@2.0.gguf"
    topic = lambda i: T.artifact_chunk(SCOPE, "adapter", "lora1", "2.0", i)  # noqa: E731
    expected: list[str] = []
    duplicates = 0
    try:
        for op, n in ops:
            i = n % m.chunk_count
            before = t.store.held()
            if op == "good" or op == "duplicate":
                if op == "duplicate" and i not in before:
                    node.chunk(topic(i), chunks[i])
                node.chunk(topic(i), chunks[i])
                if op == "duplicate" or i in before:
                    duplicates += 1
                    if duplicates == 1:
                        expected.append(ErrorCode.DUPLICATE_CHUNK)
            elif op == "wrong_size":
                node.chunk(topic(i), chunks[i] + b"x" if n % 2 or len(chunks[i]) == 1 else chunks[i][:-1])
                expected.append(ErrorCode.CHUNK_REFUSED)
            elif op == "wrong_hash":
                node.chunk(topic(i), flip_bit(chunks[i], n))
                expected.append(ErrorCode.CHUNK_REFUSED)
            elif op == "out_of_range":
                node.chunk(topic(m.chunk_count + n), chunks[i])
                expected.append(ErrorCode.CHUNK_REFUSED)
            elif op == "negative":
                with pytest.raises(ArtifactError):
                    t.store.write(-1 - n, chunks[i])
                with pytest.raises(ArtifactError):
                    t.store.write(m.chunk_count + n, chunks[i])
            elif op == "other_version":  # not being fetched: ignored, nothing kept
                node.chunk(T.artifact_chunk(SCOPE, "adapter", "lora1", "1.0", i), chunks[i])
            else:
                node.chunk(T.artifact_chunk(SCOPE, "knowledge", "lora1", "2.0", i), chunks[i])
                node.chunk(topic(i) + "/x", chunks[i])
                expected += [ErrorCode.CHUNK_REFUSED] * 2
            assert node.codes() == expected, node.reports
            assert before <= t.store.held() <= set(range(m.chunk_count))
            assert not dest.exists() and not node.installer.loaded
        for i in t.store.missing():
            node.chunk(topic(i), chunks[i])
        assert t.store.complete() and node.codes() == expected
        for i in range(m.chunk_count):
            assert (t.store.dir / str(i)).read_bytes() == chunks[i]
        if disk != "intact":
            victim = t.store.dir / str(ops[0][1] % m.chunk_count if ops else 0)
            if disk == "tampered":
                victim.write_bytes(flip_bit(victim.read_bytes(), 3))
            elif disk == "truncated":
                victim.write_bytes(victim.read_bytes()[:-1])
            else:
                victim.unlink()
        node.sync._install(t)
        if disk == "intact":
            assert t.state == "installed" and node.codes() == expected, node.reports
            assert hashlib.sha256(dest.read_bytes()).hexdigest() == m.sha256
            assert node.installer.loaded == [("lora1", "2.0", content)]
            assert node.sync.installed.all("adapter")["lora1"].sha256 == m.sha256
        else:
            assert t.state == "failed" and node.codes() == [*expected, ErrorCode.ADAPTER_REFUSED], node.reports
            assert not node.installer.loaded and not node.sync.installed.all("adapter")
        assert files_under(node.sync.install_dir) == (["lora1@2.0.gguf"] if disk == "intact" else [])
    finally:
        node.close()
