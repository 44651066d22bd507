"""Brings the base model named in desired state (`effective_model`) onto this node and asks for the switch.

The same signed, chunked, resumable transfer as adapters and knowledge (artifact_sync.py): the
manifest is verified against the pinned site key, every chunk against the manifest, the whole file
once while it is assembled. Before any chunk is asked for, the manifest's size and
`kv_bytes_per_token` are checked against this node's profile (model + KV cache for its slots and
context + overhead vs its memory budget): a model that does not fit is refused with the numbers.

The node keeps serving its current model while the file arrives. Once it is whole and verified, it
is recorded as the pending model in node.db (base_models.py) and the node is asked to switch
(`switch`: drain and execute again, node/model_switch.py says why and how the new model is checked
and committed). No desired model (None) while an artifact model is committed switches back to the
node's own model; a desired model equal to the one committed before switches without a download.

What was refused (here: budget, signature, chunks; at start: load or check) is kept in node.db by
sha256: it is not fetched again until another model is desired, and the reported state's errors
say why for as long as it is the desired one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from edgefleet.node.control.artifact_sync import ArtifactSync, Transfer
from edgefleet.node.control.base_models import OWN, BaseModels, ModelSlot
from edgefleet.node.errors import EdgefleetError, InvalidRequest, ModelError, OverBudget
from edgefleet.node.profiles import FirmwareProfile, MiB, estimate_memory_bytes
from edgefleet.proto.artifacts import ArtifactError, Manifest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ArtifactRef

log = logging.getLogger("edgefleet.node.models")


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


class ModelInstaller:
    """The precheck of a model manifest; loading is a switch (ModelSync), never done in place."""

    kind: Literal["model"] = "model"
    suffix = ".gguf"

    def __init__(self, profile: FirmwareProfile) -> None:
        self.profile = profile

    def precheck(self, m: Manifest) -> None:
        if m.kind != "model":
            raise InvalidRequest(f"{m.label} is not a base model")
        if m.kv_bytes_per_token <= 0:
            raise InvalidRequest(
                f"{m.label}: its manifest gives no kv_bytes_per_token, so the memory budget cannot be checked "
                f"before the download"
            )
        memory = estimate_memory_bytes(self.profile, m.size, m.kv_bytes_per_token)
        if memory["total"] > memory["budget"]:
            ctx = self.profile.context
            raise OverBudget(
                f"profile {self.profile.name} allows {_mib(memory['budget'])} but {m.name}@{m.version} needs "
                f"{_mib(memory['total'])}: model {_mib(memory['model'])} + KV cache {_mib(memory['kv_cache'])} "
                f"({ctx.slots} slots x {ctx.n_ctx} tokens x {m.kv_bytes_per_token} B) + overhead "
                f"{_mib(memory['overhead'])}; nothing was downloaded"
            )

    def load(self, name: str, version: str, path: Any, sha256: str) -> None:
        raise ModelError("a base model is switched to by a restart, not loaded in place")

    def unload(self, name: str) -> None:
        raise ModelError("a base model is switched away from by a restart, not unloaded in place")


class ModelSync(ArtifactSync):
    def __init__(self, *, models: BaseModels, switch: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.switch = switch
        self._failed.update({key: reason for key, (_, reason) in models.refusals().items()})
        self._switching = False

    def load_installed(self) -> None:
        """Nothing to load: build_node loaded the committed (or checked the pending) model."""

    def set_wanted_model(self, ref: ArtifactRef | None) -> None:
        self.set_wanted({ref.name: ref} if ref is not None else {})

    def errors(self) -> list[str]:
        """Why the desired model is not the one serving, while it is refused."""
        wanted, _, _ = self._snapshot()
        ref = next(iter(wanted.values()), None)
        refused = self.models.refusals().get(ref.sha256 if ref is not None else OWN)
        return [f"model {refused[0]} refused: {refused[1]}"] if refused is not None else []

    # -- worker thread -----------------------------------------------------------------------------------
    def _announce(self) -> None:
        """Refusals made at start (a switch that failed its check) go on the errors topic once connected."""
        if not self.link.connected.is_set():
            return
        for key, (label, reason) in self.models.unannounced().items():
            topic = self.topics.errors(self.node_id)
            self.report_error(topic, ErrorCode.MODEL_REFUSED, f"model {label} refused: {reason}")
            self.models.announced(key)

    def _tick(self) -> None:
        self._flush_deferred()
        self._announce()
        if self._switching:
            return
        wanted, manifests, scopes = self._snapshot()
        ref = next(iter(wanted.values()), None)
        key = ref.sha256 if ref is not None else OWN
        self._forget_others(ref, key)
        committed = self.models.committed()
        if key in self._failed:
            return
        if (committed.sha256 if committed is not None else OWN) == key:
            if (
                ref is not None
                and committed is not None
                and (committed.name, committed.version) != (ref.name, ref.version)
            ):
                # the very bytes serving, desired under another name or version: switch to that name (the
                # node reports what is desired) from the file it holds, no download
                renamed = replace(committed, name=ref.name, version=ref.version)
                self._begin(renamed, f"the file serving is desired as {ref.name}@{ref.version}: no download")
            return
        if ref is None:
            self._begin(ModelSlot(), "no model is desired: back to the node's own")
            return
        previous = self.models.previous()
        if previous is not None and previous.sha256 == ref.sha256:
            try:
                previous.model_file()
            except EdgefleetError as e:
                log.warning("previous model file unusable; downloading it", extra={"reason": str(e)})
            else:
                same = replace(previous, name=ref.name, version=ref.version)  # the same bytes, as now named
                self._begin(same, "the previous model is on disk: no download")
                return
        self._fetch(ref, manifests.get(ref.name, {}), scopes)
        self._publish_progress()

    def _forget_others(self, ref: ArtifactRef | None, key: str) -> None:
        """Another model is desired: refusals of the others go (a later return to one tries it again),
        and a transfer of another one stops."""
        for other in [k for k in self._failed if k != key]:
            del self._failed[other]
        if any(k != key for k in self.models.refusals()):
            self.models.forgive(key)
        with self._lock:
            stale = [t for name, t in self._transfers.items() if ref is None or name != ref.name]
            for t in stale:
                del self._transfers[t.manifest.name]
        for t in stale:
            if t.state == "fetching":
                self.link.unsubscribe(self._chunk_filter_for(t))

    def _install(self, t: Transfer) -> None:
        """Whole and verified: the pending model; the node switches to it (and checks it) by restarting."""
        m = t.manifest
        with self._lock:
            t.state = "verifying"
        self.changed()
        path = self.install_dir / f"{m.name}@{m.version}-{m.sha256[:12]}{self.installer.suffix}"
        try:
            assembled = t.store.assemble(path)  # the one hash of the whole file
        except (ArtifactError, OSError) as e:
            path.unlink(missing_ok=True)
            self._fail(m, t.scope, str(e))
            return
        self.link.unsubscribe(self._chunk_filter_for(t))
        t.store.discard()
        with self._lock:
            t.state = "installed"
        log.info("model downloaded and verified", extra={"artifact": m.label, "resumed_from": t.resumed_from})
        self._begin(ModelSlot(m.name, m.version, assembled.sha256, path, assembled.size), "downloaded and verified")

    def _begin(self, slot: ModelSlot, why: str) -> None:
        self.models.set_pending(slot)
        self._switching = True
        log.info("model switch: the node drains and restarts", extra={"model": slot.label, "why": why})
        self.changed()
        self.switch(f"switching model to {slot.label}")

    def _fail(self, m: Manifest, scope: str, reason: str) -> None:
        self.models.refuse(ModelSlot(m.name, m.version, m.sha256), reason, announced=True)  # before the report
        super()._fail(m, scope, reason)  # on the errors topic, and the reported state (with this refusal)
