"""Operator commands for artifacts (adapters, knowledge bundles), entries of the command table.

push-adapter: the file was uploaded piece by piece (upload-chunk) into the store; it is checked
to be a LoRA GGUF, described (architecture and the base tensor shapes it fits), signed with the
site key, published as a retained manifest under the target's scope (`artifact/group/<g>/…` or
`artifact/node/<n>/…`: the broker lets a node read only its own groups' and its own), and named in
the target's desired state. An artifact pushed to two targets is published under both; removing it
from one clears that scope's retained manifest. Nodes then ask for chunks on the requests topic
(`chunk_requests.py`), naming the scope, and the chunk sender answers on that scope's topics.

`upload_only` (push-adapter, push-knowledge): the manifest is made, signed and kept (per version)
and its `ArtifactRef` answered, but nothing is published and no desired state changes: a rollout
then moves it node by node (orchestrator/rollouts/manifests.py publishes each node's manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import PublishDesired, remove_entry, resolve_target, target_note
from edgefleet.orchestrator.drift import expected_adapters, expected_knowledge
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.artifacts import ArtifactError, Manifest, SiteKey, build_manifest, verify
from edgefleet.proto.commands import (
    AdaptersRequest,
    PushAdapterRequest,
    PushArtifactRequest,
    PushKnowledgeRequest,
    RemoveAdapterRequest,
    RemoveEntryRequest,
    RemoveKnowledgeRequest,
    UploadChunkRequest,
)
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.knowledge_bundle import BundleError, iter_bundle
from edgefleet.proto.lora_gguf import LoraFileError, read_lora
from edgefleet.proto.paging import PAGE_BUDGET_BYTES, json_size, page_of
from edgefleet.proto.payloads import ArtifactRef, CommandResult, Target
from edgefleet.proto.topics import Topics, valid_name
from edgefleet.proto.versions import is_older

log = logging.getLogger("edgefleet.orchestrator.adapters")


def adapter_fit(path: Path) -> tuple[str, dict[str, list[int]]]:
    """(architecture, base tensor → shape it fits) of a LoRA GGUF; CommandError if it is not one."""
    try:
        lora = read_lora(path)
    except LoraFileError as e:
        raise CommandError(
            f"the uploaded file is not a usable LoRA adapter: {e}", ErrorCode.ADAPTER_REFUSED, field="sha256"
        ) from e
    return lora.architecture, lora.fits()


def check_bundle(path: Path) -> None:
    """The upload is a knowledge bundle (`proto/knowledge_bundle.py`); CommandError naming what is wrong."""
    try:
        for _ in iter_bundle(path):
            pass
    except BundleError as e:
        raise CommandError(
            f"the uploaded file is not a knowledge bundle: {e}", ErrorCode.KNOWLEDGE_REFUSED, field="sha256"
        ) from e


ArtifactKind = Literal["adapter", "knowledge"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("adapter", "knowledge")


class AdapterCommands:
    def __init__(
        self,
        store: ArtifactStore,
        registry: Registry,
        site_key_path: Path,
        chunk_bytes: int,
        publish_desired: PublishDesired,
        publish_retained: Callable[[str, bytes], object],
        chunks_sent: Callable[[str], int],
        topics: Topics,
    ) -> None:
        self.store, self.registry = store, registry
        self.site_key_path = site_key_path
        self.chunk_bytes = chunk_bytes
        self.publish_desired = publish_desired
        self.publish_retained = publish_retained  # (topic, payload), QoS 1, retained: manifests
        self.chunks_sent = chunks_sent  # sha256 → chunks the sender published
        self.topics = topics

    def register(self, table: CommandTable) -> None:
        table.register(UploadChunkRequest, self.upload_chunk)
        table.register(AdaptersRequest, lambda req: CommandResult(ok=True, data=self.overview(req)))
        table.register(PushAdapterRequest, partial(self.push, kind="adapter"))
        table.register(RemoveAdapterRequest, partial(self.remove, kind="adapter"))
        table.register(PushKnowledgeRequest, partial(self.push, kind="knowledge"))
        table.register(RemoveKnowledgeRequest, partial(self.remove, kind="knowledge"))

    def site_key(self) -> SiteKey:
        """The site's signing key (read when used), or CommandError NO_SITE_KEY."""
        return self._key()

    def _key(self) -> SiteKey:
        try:
            return SiteKey.load(self.site_key_path)
        except FileNotFoundError as e:
            raise CommandError(
                f"no site key at {self.site_key_path}: run `edgefleet fleet init-site` on the orchestrator "
                f"(or set EDGEFLEET_SITE_KEY)",
                ErrorCode.NO_SITE_KEY,
            ) from e
        except (OSError, ValueError) as e:
            raise CommandError(f"the site key {self.site_key_path} cannot be read: {e}", ErrorCode.NO_SITE_KEY) from e

    def current_manifests(self) -> list[Manifest]:
        """Every stored manifest, to republish (retained) on each connect: a broker that lost them heals.

        After a key rotation the stored manifests are signed again with the current key.
        """
        try:
            key = self._key() if self.store.manifests() else None
        except CommandError as e:
            log.error("cannot sign manifests", extra={"reason": str(e)})
            key = None
        if key is not None:
            for m in self.store.manifests():
                try:
                    verify(m, key.private.public_key())
                except ArtifactError:
                    self.store.save_manifest(key.sign(m))
                    log.info("manifest signed again with the current site key", extra={"artifact": m.label})
        return self.store.manifests()

    def manifest_messages(self) -> list[tuple[str, bytes]]:
        """Every stored manifest as its retained messages, one per target whose desired state names
        it (that version, however old: a group keeps v1 while a rollout moves v2 node by node): what
        the orchestrator publishes on each connect."""
        self.current_manifests()  # the newest signed again after a key rotation
        out = []
        for doc in self.registry.all_desired().values():
            for kind in ARTIFACT_KINDS:
                for name, ref in getattr(doc, _section(kind)).items():
                    m = self.kept_manifest(kind, ref)
                    if m is not None:
                        out.append((self._manifest_topic(doc.target, kind, name), m.model_dump_json().encode()))
        return out

    def kept_manifest(self, kind: ArtifactKind, ref: ArtifactRef) -> Manifest | None:
        """The kept manifest of `ref`'s version (None when none is kept with its content), signed with
        the current site key (signed again and kept when an older key signed it)."""
        m = self.store.manifest(kind, ref.name, ref.version)
        if m is None or m.sha256 != ref.sha256:
            return None
        try:
            key = self._key()
        except CommandError as e:
            log.error("cannot sign manifests", extra={"reason": str(e)})
            return m
        try:
            verify(m, key.private.public_key())
        except ArtifactError:
            newest = self.store.manifest(kind, ref.name)
            m = key.sign(m)
            self.store.save_manifest(m, newest=newest is None or newest.version == m.version)
            log.info("manifest signed again with the current site key", extra={"artifact": m.label})
        return m

    def _manifest_topic(self, target: Target, kind: str, name: str) -> str:
        return self.topics.artifact_manifest(self.topics.artifact_scope(target.kind, target.name), kind, name)

    # -- commands --------------------------------------------------------------------------------------
    def upload_chunk(self, req: UploadChunkRequest) -> CommandResult:
        try:
            missing = self.store.put_upload(req.upload)
        except ArtifactError as e:
            raise CommandError(str(e), field="upload") from e
        return CommandResult(ok=True, data={"missing": missing})

    @staticmethod
    def _check_name(kind: ArtifactKind, name: str) -> None:
        if not valid_name(name):
            raise CommandError(
                f"{kind} name {brief(name)} is invalid: letters, digits, '.', '_' or '-', no '/' or '..'",
                field="name",
            )

    def remove(self, req: RemoveEntryRequest, kind: ArtifactKind) -> CommandResult:
        self._check_name(kind, req.name)
        t = resolve_target(req.target, self.registry)
        current = self.registry.desired(t.key)
        result = remove_entry(self.publish_desired, t, current, _section(kind), req.name, kind)
        self.publish_retained(self._manifest_topic(t, kind, req.name), b"")  # the target's scope forgets it
        log.info("manifest cleared", extra={"kind": kind, "artifact": req.name, "target": t.key})
        return result

    def push(self, req: PushArtifactRequest, kind: ArtifactKind) -> CommandResult:
        self._check_name(kind, req.name)
        t = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(t.key)
        refs = dict(getattr(current, _section(kind))) if current else {}
        manifest = self._manifest(req, kind)
        ref = ArtifactRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256, size=manifest.size)
        if req.upload_only:
            log.info("manifest kept for a rollout", extra={"artifact": manifest.label, "target": t.key})
            return CommandResult(
                ok=True,
                message=f"{manifest.label} ({manifest.size} bytes, {manifest.chunk_count} chunks) signed and kept; "
                "no target changed",
                data={"ref": ref.model_dump(), "kind": kind, "target": t.key, "chunks": manifest.chunk_count},
            )
        self.publish_retained(self._manifest_topic(t, kind, req.name), manifest.model_dump_json().encode())
        log.info(
            "manifest published",
            extra={"artifact": manifest.label, "chunks": manifest.chunk_count, "target": t.key},
        )
        refs[req.name] = ref
        doc = self.publish_desired(t, current, {_section(kind): refs})
        return CommandResult(
            ok=True,
            message=f"{manifest.label} ({manifest.size} bytes, {manifest.chunk_count} chunks) pushed to "
            f"{t.key}, generation {doc.generation}{target_note(t, self.registry)}",
            data={"generation": doc.generation, "target": t.key, "chunks": manifest.chunk_count},
        )

    def _manifest(self, req: PushArtifactRequest, kind: ArtifactKind) -> Manifest:
        """The signed manifest of the pushed version, made and stored now (or the stored one, re-pushed)."""
        if not self.store.has_blob(req.sha256):
            raise CommandError(
                f"no uploaded file with sha256 {brief(req.sha256)}: upload it first (upload-chunk)", field="sha256"
            )
        existing = self.store.manifest(kind, req.name)
        if existing is not None:
            if is_older(req.version, existing.version):
                raise CommandError(
                    f"{kind} {req.name} version {req.version} is older than {existing.version}, pushed before; "
                    f"push a newer version (nodes refuse older ones as replays)",
                    ErrorCode.OLDER_VERSION,
                    field="version",
                )
            if req.version == existing.version:
                if req.sha256 != existing.sha256:
                    raise CommandError(
                        f"{kind} {req.name}@{req.version} was pushed before with other content; use a new version",
                        field="version",
                    )
                return existing
        extra: dict[str, Any] = {}
        if kind == "adapter":
            architecture, fits = adapter_fit(self.store.blob_path(req.sha256))
            extra = {"base_architecture": architecture, "base_tensors": fits}
        else:
            check_bundle(self.store.blob_path(req.sha256))
        try:
            unsigned = build_manifest(
                self.store.blob_path(req.sha256), kind, req.name, req.version, chunk_bytes=self.chunk_bytes, **extra
            )
        except ValueError as e:
            raise CommandError(f"manifest refused: {e}", ErrorCode.MANIFEST_REFUSED) from e
        manifest = self._key().sign(unsigned)
        self.store.save_manifest(manifest)
        return manifest

    def overview(self, req: AdaptersRequest | None = None) -> dict[str, Any]:
        """The manifests, the desired versions per target, and one page of nodes (what each should
        have, has, and is fetching): `nodes`, `total` nodes, `next_offset` (None: the last page)."""
        req = req or AdaptersRequest()
        desired = self.registry.all_desired()
        nodes = []
        for row in self.registry.rows():
            if req.group and req.group not in [*row.groups, *row.assigned_groups]:
                continue
            want = expected_adapters(row.node_id, row.groups, desired)
            want_k = expected_knowledge(row.node_id, row.groups, desired)
            node = {
                "groups": row.groups,
                "state": row.state,
                "desired": {n: r.version for n, r in want.items()},
                "loaded": row.adapters,
                "knowledge_desired": {n: r.version for n, r in want_k.items()},
                "knowledge_loaded": row.knowledge,
                "transfers": row.transfers,
            }
            nodes.append((row.node_id, node))
        manifests = [
            {
                "name": m.name,
                "version": m.version,
                "size": m.size,
                "sha256": m.sha256,
                "chunks": m.chunk_count,
                "chunks_sent": self.chunks_sent(m.sha256),
                "kind": m.kind,
            }
            for m in self.store.manifests()
        ]
        versions = {k: {n: r.version for n, r in d.adapters.items()} for k, d in desired.items() if d.adapters}
        page = page_of(nodes, req.offset, req.limit, max(PAGE_BUDGET_BYTES - json_size([manifests, versions]), 0))
        return {
            "manifests": manifests,
            "desired": versions,
            "nodes": dict(page.items),
            "total": page.total,
            "offset": page.offset,
            "next_offset": page.next_offset,
        }


def _section(kind: ArtifactKind) -> str:
    """The desired-state section of an artifact kind."""
    return "knowledge" if kind == "knowledge" else "adapters"
