"""Brings the artifacts named in desired state onto this node: signed manifest → chunks → verify → install.

One instance per kind (adapters, knowledge collections); an `Installer` says how a verified file
of that kind is checked, put into service and taken out of it. Base models use the same transfer
with their own switch (node/control/model_sync.py).

Network thread (paho): manifests are checked and verified against the pinned site key
(manifest_check.py); chunks are checked against the manifest (index, size, sha256) and kept on
disk. Worker thread: starts transfers, asks for missing chunks a window at a time (again after a
reconnect or when nothing came for `retry_s`), assembles and installs a complete file, removes
artifacts no longer desired. The previous version serves until the new one is loaded; a failure
leaves it and is reported.

Scopes: an artifact is published under the target it was pushed to (`group/<g>`, `node/<n>`); the
node reads the manifests of its own scope and of each of its groups' (`set_groups`, followed when
its groups change), and fetches the chunks from the scope whose manifest it took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.node.control.artifact_transfer import Installer, Kind, Transfer
from edgefleet.node.control.chunk_store import ChunkStore
from edgefleet.node.control.desired_store import InstalledArtifact, InstalledArtifacts
from edgefleet.node.control.manifest_check import ManifestRefused, check_manifest
from edgefleet.node.errors import EdgefleetError
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.artifacts import ArtifactError, Manifest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ArtifactRef, ChunkRequest, TransferProgress
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node.artifacts")
__all__ = ["ArtifactSync", "Installer", "Kind", "Transfer"]
Reporter = Callable[[str, str, str], None]  # (topic, code, message) → errors topic
REFUSED = {
    "adapter": ErrorCode.ADAPTER_REFUSED,
    "knowledge": ErrorCode.KNOWLEDGE_REFUSED,
    "model": ErrorCode.MODEL_REFUSED,
}


class ArtifactSync:
    def __init__(
        self,
        *,
        node_id: str,
        link: MqttLink,
        topics: Topics,
        installer: Installer,
        installed: InstalledArtifacts,
        data_dir: Path,
        site_key: Ed25519PublicKey | None,
        report_error: Reporter,
        changed: Callable[[], None],
        window: int = 16,
        retry_s: float = 10.0,
    ) -> None:
        self.node_id, self.link, self.topics = node_id, link, topics
        self.installer, self.installed = installer, installed
        self.kind: Kind = installer.kind
        self.chunk_root = data_dir / "artifacts"
        self.install_dir = data_dir / f"{installer.kind}s"
        self.site_key = site_key
        self.report_error, self.changed = report_error, changed
        self.window, self.retry_s = window, retry_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._wanted: dict[str, ArtifactRef] = {}
        self._scopes: list[str] = []  # node scope, then its groups'; the manifests of each are read
        self._manifests: dict[str, dict[str, Manifest]] = {}  # name → scope → verified manifest
        self._transfers: dict[str, Transfer] = {}
        self._failed: dict[str, str] = {}  # sha256 → why; not retried until another version is desired
        self._deferred: list[tuple[str, str, str]] = []  # error reports found before the link was up
        self._last_report = 0.0
        self._thread = threading.Thread(target=self._run, name=f"edgefleet-{installer.kind}-sync", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def load_installed(self) -> None:
        """At start, before serving: load what this node installed earlier (a bad file is forgotten).

        Hashed when it was assembled, a file is checked here by its size and by what loads it."""
        for a in self.installed.all(self.kind).values():
            try:
                if (size := a.path.stat().st_size) != a.size:
                    raise ArtifactError(f"{a.path} is {size} bytes; {a.size} were installed")
                self.installer.load(a.name, a.version, a.path, a.sha256)
            except (EdgefleetError, ArtifactError, OSError) as e:
                log.error(
                    "installed artifact cannot be loaded; unloaded",
                    extra={"kind": self.kind, "artifact": a.name, "reason": str(e)},
                )
                self.installed.forget(self.kind, a.name)
                a.path.unlink(missing_ok=True)
                self._deferred.append(  # reported once connected (e.g. an adapter built for another base model)
                    (
                        self.topics.artifact_manifest(
                            self.topics.artifact_scope("node", self.node_id), self.kind, a.name
                        ),
                        REFUSED[self.kind],
                        f"{self.kind} {a.name}@{a.version} unloaded: it cannot be loaded on this node now: {e}",
                    )
                )

    def start(self) -> None:
        self._thread.start()

    def set_groups(self, groups: list[str]) -> None:
        """Read the manifests of this node's scope and of these groups' only (what the broker lets it
        read): subscribe to new scopes, leave dropped ones and forget what came from them."""
        scopes = [
            self.topics.artifact_scope("node", self.node_id),
            *(self.topics.artifact_scope("group", g) for g in groups),
        ]
        with self._lock:
            before, self._scopes = self._scopes, list(dict.fromkeys(scopes))
            for gone in set(before) - set(self._scopes):
                for held in self._manifests.values():
                    held.pop(gone, None)
        for gone in [s for s in before if s not in self._scopes]:
            self.link.unsubscribe(self.topics.all_artifact_manifests(gone, self.kind))
        for new in [s for s in self._scopes if s not in before]:
            self.link.subscribe(self.topics.all_artifact_manifests(new, self.kind), self.on_manifest)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def on_connect(self) -> None:
        """After a reconnect, ask again for everything outstanding (the broker may have lost it)."""
        with self._lock:
            for t in self._transfers.values():
                t.requested.clear()
                t.subscribed = False
        self._wake.set()

    def set_wanted(self, wanted: dict[str, ArtifactRef]) -> None:
        with self._lock:
            self._wanted = dict(wanted)
        self._wake.set()

    def report(self) -> tuple[dict[str, str], dict[str, TransferProgress]]:
        with self._lock:
            versions = {name: a.version for name, a in self.installed.all(self.kind).items()}
            transfers = {f"{self.kind}/{name}": t.progress() for name, t in self._transfers.items()}
        return versions, transfers

    # -- network thread ----------------------------------------------------------------------------------
    def on_manifest(self, msg: mqtt.MQTTMessage) -> None:
        where = self.topics.manifest_of(msg.topic)
        if where is None or where.scope not in self._scopes:
            log.info("manifest outside this node's scopes ignored", extra={"topic": msg.topic})
            return
        if not msg.payload:  # cleared: the artifact was removed from that target
            with self._lock:
                self._manifests.get(where.name, {}).pop(where.scope, None)
            return
        try:
            m = check_manifest(msg.topic, msg.payload, where, self.site_key, self._installed_version)
        except ManifestRefused as e:
            self.report_error(msg.topic, e.code, str(e))
            return
        with self._lock:
            self._manifests.setdefault(m.name, {})[where.scope] = m
        log.info("manifest verified", extra={"artifact": m.label, "chunks": m.chunk_count, "scope": where.scope})
        self._wake.set()

    def _installed_version(self, name: str) -> str | None:
        current = self.installed.all(self.kind).get(name)
        return current.version if current is not None else None

    def on_chunk(self, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.chunk_of(msg.topic)
        if parsed is None or parsed.kind != self.kind:
            self.report_error(msg.topic, ErrorCode.CHUNK_REFUSED, f"not a chunk topic: {msg.topic}")
            return
        name, version, index = parsed.name, parsed.version, parsed.index
        data = bytes(msg.payload)
        with self._lock:
            t = self._transfers.get(name)
            if t is None or t.manifest.version != version or t.state != "fetching":
                log.info("chunk not being fetched ignored", extra={"topic": msg.topic})
                return
            try:
                kept = t.store.write(index, data)  # verified here, once; tampered data is refused even when held
            except ArtifactError as e:
                self.report_error(msg.topic, ErrorCode.CHUNK_REFUSED, str(e))
                return
            except OSError as e:
                self.report_error(msg.topic, ErrorCode.DISK_ERROR, f"{t.manifest.label}: chunk {index} not kept: {e}")
                return
            t.requested.discard(index)
            if kept:
                first = False
                t.last_progress = time.monotonic()
            else:
                t.duplicates += 1
                first = t.duplicates == 1
        if first:  # QoS 1 redelivery and group fan-out make some normal: say so once per transfer
            self.report_error(
                msg.topic, ErrorCode.DUPLICATE_CHUNK, f"{t.manifest.label}: chunk {index} already held; ignored"
            )
        self._wake.set()

    # -- worker thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._tick()
            except Exception:  # keep syncing whatever one step did
                log.exception("artifact sync step failed", extra={"kind": self.kind})

    def _snapshot(self) -> tuple[dict[str, ArtifactRef], dict[str, dict[str, Manifest]], list[str]]:
        with self._lock:
            wanted = dict(self._wanted)
            manifests = {name: dict(by_scope) for name, by_scope in self._manifests.items()}
            return wanted, manifests, list(self._scopes)

    def _flush_deferred(self) -> None:
        while self._deferred and self.link.connected.is_set():
            self.report_error(*self._deferred.pop(0))

    def _tick(self) -> None:
        self._flush_deferred()
        wanted, manifests, scopes = self._snapshot()
        installed = self.installed.all(self.kind)
        for name in set(installed) - set(wanted):
            self._remove(installed[name])
        for name, ref in wanted.items():
            have = installed.get(name)
            if (have is not None and have.sha256 == ref.sha256) or ref.sha256 in self._failed:
                continue
            self._fetch(ref, manifests.get(name, {}), scopes)
        self._publish_progress()

    def _fetch(self, ref: ArtifactRef, held: dict[str, Manifest], scopes: list[str]) -> None:
        """One step of bringing `ref` here: start its transfer, ask for chunks, or install it when whole."""
        fits = [s for s in scopes if s in held and (held[s].sha256, held[s].version) == (ref.sha256, ref.version)]
        if not fits:
            return  # its manifest has not arrived yet
        with self._lock:
            going = self._transfers.get(ref.name)
        scope = going.scope if going is not None and going.scope in fits else fits[0]
        t = self._transfer(held[scope], scope)
        if t is None:
            return
        if t.store.complete():
            self._install(t)
        else:
            self._request(t)

    def _transfer(self, m: Manifest, scope: str) -> Transfer | None:
        with self._lock:
            t = self._transfers.get(m.name)
            if t is not None and t.manifest.sha256 == m.sha256 and t.scope == scope:
                return t
        if t is not None:  # a newer version superseded this one, or its scope is gone: the chunks held stay
            self.link.unsubscribe(self._chunk_filter_for(t))
            if t.manifest.sha256 != m.sha256:
                t.store.discard()
        try:
            self.installer.precheck(m)
        except EdgefleetError as e:
            self._fail(m, scope, str(e))
            return None
        store = ChunkStore(self.chunk_root, m)
        t = Transfer(m, scope, store, resumed_from=len(store.held()))
        with self._lock:
            self._transfers[m.name] = t
        log.info("transfer started", extra={"artifact": m.label, "held": t.resumed_from, "total": m.chunk_count})
        self.changed()
        return t

    def _request(self, t: Transfer) -> None:
        if not self.link.connected.is_set():
            return
        if not t.subscribed:
            t.subscribed = self.link.subscribe_wait(self._chunk_filter_for(t), self.on_chunk, timeout=5)
            if not t.subscribed:
                return
        with self._lock:
            if time.monotonic() - t.last_progress > self.retry_s and t.requested:
                log.info("no chunk came; asking again", extra={"artifact": t.manifest.label})
                t.requested.clear()
                t.last_progress = time.monotonic()
            if len(t.requested) > self.window // 2:
                return
            ask = [i for i in t.store.missing() if i not in t.requested][: self.window - len(t.requested)]
            t.requested.update(ask)
        if ask:
            req = ChunkRequest(
                node_id=self.node_id,
                scope=t.scope,
                kind=self.kind,
                name=t.manifest.name,
                version=t.manifest.version,
                sha256=t.manifest.sha256,
                chunks=ask,
            )
            self.link.publish(self.topics.artifact_chunk_requests(self.node_id), req.dumps(), qos=1)

    def _chunk_filter_for(self, t: Transfer) -> str:
        m = t.manifest
        return self.topics.artifact_chunks(t.scope, m.kind, m.name, m.version)

    def _install(self, t: Transfer) -> None:
        m = t.manifest
        with self._lock:
            t.state = "verifying"
        self.changed()
        path = self.install_dir / f"{m.name}@{m.version}{self.installer.suffix}"
        try:
            assembled = t.store.assemble(path)  # the one hash of the whole file, passed on from here
            self.installer.load(m.name, m.version, path, assembled.sha256)
        except (ArtifactError, EdgefleetError, OSError) as e:
            path.unlink(missing_ok=True)
            self._fail(m, t.scope, str(e))
            return
        previous = self.installed.all(self.kind).get(m.name)
        self.installed.record(InstalledArtifact(self.kind, m.name, m.version, assembled.sha256, path, assembled.size))
        if previous is not None and previous.path != path:
            previous.path.unlink(missing_ok=True)
        self.link.unsubscribe(self._chunk_filter_for(t))
        t.store.discard()
        with self._lock:
            t.state = "installed"
        log.info("artifact installed", extra={"artifact": m.label, "resumed_from": t.resumed_from})
        self.changed()

    def _fail(self, m: Manifest, scope: str, reason: str) -> None:
        self._failed[m.sha256] = reason
        with self._lock:
            t = self._transfers.get(m.name)
            if t is None or t.manifest.sha256 != m.sha256:
                t = Transfer(m, scope, ChunkStore(self.chunk_root, m), resumed_from=0)
                self._transfers[m.name] = t
            t.state, t.error = "failed", reason
        self.link.unsubscribe(self._chunk_filter_for(t))
        t.store.discard()
        log.error("artifact refused; the previous version stays", extra={"artifact": m.label, "reason": reason})
        self.report_error(
            self.topics.artifact_manifest(t.scope, m.kind, m.name),
            REFUSED[m.kind],
            f"{m.label} refused: {reason}",
        )
        self.changed()

    def _remove(self, a: InstalledArtifact) -> None:
        try:
            self.installer.unload(a.name)
        except EdgefleetError as e:
            log.warning("artifact was not in service", extra={"artifact": a.name, "reason": str(e)})
        self.installed.forget(self.kind, a.name)
        a.path.unlink(missing_ok=True)
        with self._lock:
            self._transfers.pop(a.name, None)
        log.info(
            "artifact removed (no longer desired)", extra={"kind": self.kind, "artifact": a.name, "version": a.version}
        )
        self.changed()

    def _publish_progress(self) -> None:
        """While chunks arrive, the reported state shows progress at most twice a second."""
        with self._lock:
            fetching = any(t.state == "fetching" for t in self._transfers.values())
        now = time.monotonic()
        if fetching and now - self._last_report >= 0.5:
            self._last_report = now
            self.changed()
