"""Operator commands for base models (GGUF), entries of the command table: push-model, rm-model.

push-model: the file was uploaded piece by piece (upload-chunk) into the store, like an adapter.
It is checked to be a GGUF base model and no larger than the site takes, its header read
(architecture and the KV-cache bytes of one token: proto/model_gguf.py) into its manifest, which
is signed with the site key, kept per version, published retained under the target's scope
(`artifact/<group|node>/<t>/model/<name>/manifest`) and named in the target's desired state
(`DesiredState.model`). Nodes check the manifest against their memory budget before they ask for
any chunk, then fetch it through the chunk requests like any artifact (`chunk_requests.py`).

`upload_only`: the manifest is made, signed and kept, and its `ArtifactRef` answered, but nothing
is published and no desired state changes: a rollout then moves the model node by node, publishing
each node's manifest with `publish_manifests` after each override it publishes.

rm-model: the target's `model` cleared (its nodes go back to their own model) and the scope's
retained manifest cleared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import PublishDesired, refuse_older, resolve_target, target_note
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.artifacts import ArtifactError, Manifest, SiteKey, build_manifest, verify
from edgefleet.proto.commands import PushModelRequest, RemoveModelRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.model_gguf import ModelFileError, read_model
from edgefleet.proto.payloads import ArtifactRef, CommandResult, DesiredState, Target
from edgefleet.proto.topics import Topics, valid_name
from edgefleet.proto.versions import is_older

log = logging.getLogger("edgefleet.orchestrator.models")

KIND: Literal["model"] = "model"
MiB = 1024 * 1024


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def ref_of(manifest: Manifest) -> ArtifactRef:
    return ArtifactRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256, size=manifest.size)


class ModelCommands:
    def __init__(
        self,
        store: ArtifactStore,
        registry: Registry,
        site_key: Callable[[], SiteKey],
        chunk_bytes: int,
        max_model_bytes: int,
        publish_desired: PublishDesired,
        publish_retained: Callable[[str, bytes], object],
        topics: Topics,
    ) -> None:
        self.store, self.registry = store, registry
        self.site_key = site_key  # the site's signing key, read when used (CommandError NO_SITE_KEY without one)
        self.chunk_bytes, self.max_model_bytes = chunk_bytes, max_model_bytes
        self.publish_desired = publish_desired
        self.publish_retained = publish_retained  # (topic, payload), QoS 1, retained: manifests
        self.topics = topics

    def register(self, table: CommandTable) -> None:
        table.register(PushModelRequest, self.push)
        table.register(RemoveModelRequest, self.remove)

    def manifest_topic(self, target: Target, name: str) -> str:
        return self.topics.artifact_manifest(self.topics.artifact_scope(target.kind, target.name), KIND, name)

    # -- commands --------------------------------------------------------------------------------------
    def push(self, req: PushModelRequest) -> CommandResult:
        if not valid_name(req.name):
            raise CommandError(
                f"model name {brief(req.name)} is invalid: letters, digits, '.', '_' or '-', no '/' or '..'",
                field="name",
            )
        t = resolve_target(req.target, self.registry, creating=True, new_group=req.new_group)
        current = self.registry.desired(t.key)
        desired = current.model if current is not None else None
        if desired is not None and desired.name == req.name:
            refuse_older("model", req.name, req.version, desired.version, t.key, req.force, "version")
        manifest = self.manifest(req)
        ref = ref_of(manifest)
        facts = {
            "model": ref.model_dump(),
            "architecture": manifest.model_architecture,
            "kv_bytes_per_token": manifest.kv_bytes_per_token,
            "size": manifest.size,
            "chunks": manifest.chunk_count,
            "target": t.key,
        }
        if req.upload_only:
            return CommandResult(
                ok=True,
                message=f"{manifest.label} ({_mib(manifest.size)}, {manifest.model_architecture}, "
                f"{manifest.kv_bytes_per_token} KV bytes per token) signed and kept; no target changed",
                data=facts,
            )
        if desired is not None and desired.name != req.name:  # the scope forgets the model it replaces
            self.publish_retained(self.manifest_topic(t, desired.name), b"")
        self.publish_retained(self.manifest_topic(t, req.name), manifest.model_dump_json().encode())
        log.info(
            "manifest published",
            extra={"artifact": manifest.label, "chunks": manifest.chunk_count, "target": t.key},
        )
        doc = self.publish_desired(t, current, {"model": ref})
        return CommandResult(
            ok=True,
            message=f"{manifest.label} ({_mib(manifest.size)}, {manifest.chunk_count} chunks, "
            f"{manifest.model_architecture}) pushed to {t.key}, generation {doc.generation}"
            f"{target_note(t, self.registry)}",
            data={**facts, "generation": doc.generation},
        )

    def remove(self, req: RemoveModelRequest) -> CommandResult:
        t = resolve_target(req.target, self.registry)
        current = self.registry.desired(t.key)
        if current is None or current.model is None:
            raise CommandError(
                f"no model is desired for {t.key}: its nodes run their own already", ErrorCode.NOT_FOUND, field="target"
            )
        name = current.model.name
        doc = self.publish_desired(t, current, {"model": None})
        self.publish_retained(self.manifest_topic(t, name), b"")
        log.info("manifest cleared", extra={"kind": KIND, "artifact": name, "target": t.key})
        return CommandResult(
            ok=True,
            message=f"model {name} removed from {t.key}: its nodes go back to their own model, "
            f"generation {doc.generation}",
            data={"generation": doc.generation, "target": t.key},
        )

    # -- manifests -------------------------------------------------------------------------------------
    def manifest(self, req: PushModelRequest) -> Manifest:
        """The signed manifest of the pushed version: made, checked and kept now, or the one kept for
        that version before (the same content)."""
        if not self.store.has_blob(req.sha256):
            raise CommandError(
                f"no uploaded file with sha256 {brief(req.sha256)}: upload it first (upload-chunk)", field="sha256"
            )
        newest = self.store.manifest(KIND, req.name)
        if newest is not None and not req.force and is_older(req.version, newest.version):
            raise CommandError(
                f"model {req.name} version {req.version} is older than {newest.version}, pushed before; "
                f"push a newer version, or pass --force to go back",
                ErrorCode.OLDER_VERSION,
                field="version",
            )
        kept = self.store.manifest(KIND, req.name, req.version)
        if kept is not None:
            if kept.sha256 != req.sha256:
                raise CommandError(
                    f"model {req.name}@{req.version} was pushed before with other content; use a new version",
                    field="version",
                )
            return self._signed(kept)
        path = self.store.blob_path(req.sha256)
        self._check(path)
        try:
            header = read_model(path)
        except ModelFileError as e:
            raise CommandError(
                f"the uploaded file is not a usable GGUF model: {e}", ErrorCode.MODEL_REFUSED, field="sha256"
            ) from e
        try:
            unsigned = build_manifest(
                path,
                KIND,
                req.name,
                req.version,
                chunk_bytes=self.chunk_bytes,
                model_architecture=header.architecture,
                kv_bytes_per_token=header.kv_bytes_per_token,
            )
        except ValueError as e:
            raise CommandError(f"manifest refused: {e}", ErrorCode.MANIFEST_REFUSED) from e
        manifest = self.site_key().sign(unsigned)
        self.store.save_manifest(manifest, newest=newest is None or not is_older(req.version, newest.version))
        log.info(
            "model manifest made",
            extra={
                "artifact": manifest.label,
                "size_bytes": manifest.size,
                "architecture": header.architecture,
                "kv_bytes_per_token": header.kv_bytes_per_token,
            },
        )
        return manifest

    def _check(self, path: Path) -> None:
        size = path.stat().st_size
        if size > self.max_model_bytes:
            raise CommandError(
                f"the uploaded model is {size} bytes ({_mib(size)}); this site takes models of at most "
                f"{self.max_model_bytes} bytes ({_mib(self.max_model_bytes)}, EDGEFLEET_MAX_MODEL_BYTES)",
                ErrorCode.MODEL_REFUSED,
                field="sha256",
            )

    def _signed(self, manifest: Manifest) -> Manifest:
        """`manifest` signed with the current site key (signed again and kept after a key rotation)."""
        key = self.site_key()
        try:
            verify(manifest, key.private.public_key())
            return manifest
        except ArtifactError:
            signed = key.sign(manifest)
            newest = self.store.manifest(KIND, manifest.name)
            self.store.save_manifest(signed, newest=newest is None or newest.version == manifest.version)
            log.info("manifest signed again with the current site key", extra={"artifact": manifest.label})
            return signed

    def messages_for(self, doc: DesiredState) -> list[tuple[str, bytes]]:
        """The retained manifest message of the model `doc` names, under `doc`'s target scope (none when
        it names none, or its manifest is not kept)."""
        ref = doc.model
        if ref is None:
            return []
        kept = self.store.manifest(KIND, ref.name, ref.version)
        if kept is None or kept.sha256 != ref.sha256:
            log.error("no manifest kept for a desired model", extra={"artifact": f"{ref.name}@{ref.version}"})
            return []
        try:
            kept = self._signed(kept)
        except CommandError as e:
            log.error("cannot sign manifests", extra={"reason": str(e)})
        return [(self.manifest_topic(doc.target, ref.name), kept.model_dump_json().encode())]

    def publish_manifests(self, doc: DesiredState) -> int:
        """Publish (retained) the manifest of the model `doc` names under its target's scope; the
        rollout driver calls it for each node override it publishes. Returns how many were published."""
        messages = self.messages_for(doc)
        for topic, payload in messages:
            self.publish_retained(topic, payload)
        return len(messages)

    def manifest_messages(self) -> list[tuple[str, bytes]]:
        """Every desired model's manifest under its target's scope: published on each connect."""
        out: list[tuple[str, bytes]] = []
        for doc in self.registry.all_desired().values():
            out.extend(self.messages_for(doc))
        return out
