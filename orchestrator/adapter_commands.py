"""Operator commands for adapters and the chunk requests of nodes.

push-adapter: the file was uploaded piece by piece (upload-chunk) into the store; it is checked
to be a LoRA GGUF, described (architecture and the base tensor shapes it fits), signed with the
site key, published as a retained manifest, and named in the target's desired state. Nodes then
ask for chunks on the requests topic and the chunk sender answers.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gguf
import paho.mqtt.client as mqtt

from edgefleet.orchestrator.artifact_store import ArtifactStore
from edgefleet.orchestrator.chunk_sender import ChunkSender
from edgefleet.orchestrator.desired_edits import CommandError, PublishDesired, remove_entry
from edgefleet.orchestrator.registry import Registry, expected_adapters, expected_knowledge
from edgefleet.proto.artifacts import ArtifactError, Manifest, SiteKey, build_manifest, is_older, verify
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.payloads import (
    ArtifactRef,
    ChunkRequest,
    Command,
    CommandResult,
    PayloadError,
    Target,
    parse_payload,
)
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator.adapters")


def adapter_fit(path: Path) -> tuple[str, dict[str, list[int]]]:
    """(architecture, base tensor → shape it fits) of a LoRA GGUF; CommandError if it is not one."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises assorted errors on a file that is not GGUF
        raise CommandError(f"the uploaded file is not a readable GGUF file: {e}") from e

    def text(key: str) -> str:
        f = reader.fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None and f.data else ""

    if text("general.type") != "adapter" or text("adapter.type") != "lora":
        raise CommandError("the uploaded file is not a LoRA adapter (general.type 'adapter', adapter.type 'lora')")
    halves: dict[str, dict[str, list[int]]] = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".lora_")
        halves.setdefault(base, {})[kind] = [int(x) for x in t.shape]
    fits = {}
    for base, ab in halves.items():
        if "a" not in ab or "b" not in ab:
            raise CommandError(f"adapter tensor {base} lacks its lora_a or lora_b half")
        fits[base] = [ab["a"][0], ab["b"][1]]
    return text("general.architecture"), fits


def check_bundle(path: Path) -> None:
    """A knowledge bundle is gzip'd UTF-8 JSON lines, one object with a string id each."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    item = json.loads(line)
                    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                        raise CommandError(f"knowledge bundle line {n}: an object with a string id is needed")
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise CommandError(f"the uploaded file is not a knowledge bundle (gzip'd JSON lines): {e}") from e


class AdapterCommands:
    def __init__(
        self,
        store: ArtifactStore,
        registry: Registry,
        link: MqttLink,
        topics: Topics,
        sender: ChunkSender,
        site_key_path: Path,
        chunk_bytes: int,
        publish_desired: PublishDesired,
        error: Callable[[str, str, str], None],
    ) -> None:
        self.store, self.registry, self.link, self.topics = store, registry, link, topics
        self.sender = sender
        self.site_key_path = site_key_path
        self.chunk_bytes = chunk_bytes
        self.publish_desired = publish_desired
        self.error = error

    def _key(self) -> SiteKey:
        try:
            return SiteKey.load(self.site_key_path)
        except FileNotFoundError as e:
            raise CommandError(
                f"no site key at {self.site_key_path}: run `edgefleet fleet init-site` on the orchestrator "
                f"(or set EDGEFLEET_SITE_KEY)"
            ) from e
        except (OSError, ValueError) as e:
            raise CommandError(f"the site key {self.site_key_path} cannot be read: {e}") from e

    def retained_manifests(self) -> list[tuple[str, bytes]]:
        """Every stored manifest, republished (retained) on each connect: a broker that lost them heals.

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
        return [
            (self.topics.artifact_manifest(m.kind, m.name), m.model_dump_json().encode())
            for m in self.store.manifests()
        ]

    # -- commands --------------------------------------------------------------------------------------
    def run(self, cmd: Command, target: Callable[[str], Target]) -> CommandResult:
        if cmd.op == "upload-chunk":
            if cmd.upload is None:
                raise CommandError("upload-chunk needs an upload")
            try:
                missing = self.store.put_upload(cmd.upload)
            except ArtifactError as e:
                raise CommandError(str(e)) from e
            return CommandResult(ok=True, data={"missing": missing})
        if cmd.op == "adapters":
            return CommandResult(ok=True, data=self.overview())
        kind: Literal["adapter", "knowledge"] = "knowledge" if cmd.op.endswith("-knowledge") else "adapter"
        field = "knowledge" if kind == "knowledge" else "adapters"
        if not valid_name(cmd.name):
            raise CommandError(f"{kind} name {cmd.name!r} is invalid: letters, digits, '.', '_' or '-', no '/' or '..'")
        t = target(cmd.target)
        current = self.registry.desired(t.key)
        refs = dict(getattr(current, field)) if current else {}
        if cmd.op.startswith("rm-"):
            return remove_entry(self.publish_desired, t, current, field, cmd.name, kind)
        manifest = self._manifest(cmd, kind)
        refs[cmd.name] = ArtifactRef(
            name=manifest.name, version=manifest.version, sha256=manifest.sha256, size=manifest.size
        )
        doc = self.publish_desired(t, current, {field: refs})
        return CommandResult(
            ok=True,
            message=f"{manifest.label} ({manifest.size} bytes, {manifest.chunk_count} chunks) pushed to "
            f"{t.key}, generation {doc.generation}",
            data={"generation": doc.generation, "target": t.key, "chunks": manifest.chunk_count},
        )

    def _manifest(self, cmd: Command, kind: Literal["adapter", "knowledge"]) -> Manifest:
        """The signed manifest of the pushed version, made and published now (or the stored one, re-pushed)."""
        if not self.store.has_blob(cmd.sha256):
            raise CommandError(f"no uploaded file with sha256 {cmd.sha256!r}: upload it first (upload-chunk)")
        existing = self.store.manifest(kind, cmd.name)
        if existing is not None:
            if is_older(cmd.version, existing.version):
                raise CommandError(
                    f"{kind} {cmd.name} version {cmd.version} is older than {existing.version}, pushed before; "
                    f"push a newer version (nodes refuse older ones as replays)"
                )
            if cmd.version == existing.version:
                if cmd.sha256 != existing.sha256:
                    raise CommandError(
                        f"{kind} {cmd.name}@{cmd.version} was pushed before with other content; use a new version"
                    )
                return existing
        extra: dict[str, Any] = {}
        if kind == "adapter":
            architecture, fits = adapter_fit(self.store.blob_path(cmd.sha256))
            extra = {"base_architecture": architecture, "base_tensors": fits}
        else:
            check_bundle(self.store.blob_path(cmd.sha256))
        try:
            unsigned = build_manifest(
                self.store.blob_path(cmd.sha256), kind, cmd.name, cmd.version, chunk_bytes=self.chunk_bytes, **extra
            )
        except ValueError as e:
            raise CommandError(f"manifest refused: {e}") from e
        manifest = self._key().sign(unsigned)
        self.store.save_manifest(manifest)
        self.link.publish(
            self.topics.artifact_manifest(kind, cmd.name), manifest.model_dump_json().encode(), qos=1, retain=True
        )
        log.info("manifest published", extra={"artifact": manifest.label, "chunks": manifest.chunk_count})
        return manifest

    def overview(self) -> dict[str, Any]:
        desired = self.registry.all_desired()
        nodes = {}
        for row in self.registry.rows():
            want = expected_adapters(row.node_id, row.groups, desired)
            want_k = expected_knowledge(row.node_id, row.groups, desired)
            nodes[row.node_id] = {
                "groups": row.groups,
                "state": row.state,
                "desired": {n: r.version for n, r in want.items()},
                "loaded": row.adapters,
                "knowledge_desired": {n: r.version for n, r in want_k.items()},
                "knowledge_loaded": row.knowledge,
                "transfers": row.transfers,
            }
        return {
            "manifests": [
                {
                    "name": m.name,
                    "version": m.version,
                    "size": m.size,
                    "sha256": m.sha256,
                    "chunks": m.chunk_count,
                    "chunks_sent": self.sender.sent.get(m.sha256, 0),
                    "kind": m.kind,
                }
                for m in self.store.manifests()
            ],
            "desired": {k: {n: r.version for n, r in d.adapters.items()} for k, d in desired.items() if d.adapters},
            "nodes": nodes,
        }

    # -- chunk requests from nodes -------------------------------------------------------------------------
    def on_chunk_request(self, msg: mqtt.MQTTMessage) -> None:
        try:
            req = parse_payload(ChunkRequest, msg.payload)
        except PayloadError as e:
            self.error(msg.topic, "invalid_payload", str(e))
            return
        manifest = self.store.manifest(req.kind, req.name) if valid_name(req.name) else None
        if manifest is None or manifest.version != req.version or manifest.sha256 != req.sha256:
            self.error(
                msg.topic,
                "unknown_artifact",
                f"node {req.node_id} asked for {req.kind} {req.name}@{req.version}, which is not the current version",
            )
            return
        bad = [i for i in req.chunks if i >= manifest.chunk_count]
        if bad:
            self.error(
                msg.topic,
                "chunk_out_of_range",
                f"node {req.node_id} asked for chunks {bad[:5]} of {manifest.label}, which has {manifest.chunk_count}",
            )
        added = self.sender.enqueue(manifest, [i for i in req.chunks if i < manifest.chunk_count])
        log.info(
            "chunks requested",
            extra={"node": req.node_id, "artifact": manifest.label, "asked": len(req.chunks), "queued": added},
        )
