"""Installs LoRA adapters into the engine: checks fit and memory budget, then hot-swaps.

The previous version keeps serving until the new one is checked and loaded; a failure leaves
the node on the old version and says why.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edgefleet.node.adapter_check import base_tensor_shapes, check_adapter
from edgefleet.node.engine.adapters import LoadedAdapter
from edgefleet.node.engine.engine import Engine
from edgefleet.node.errors import InvalidRequest, OverBudget
from edgefleet.node.model_catalog import sha256_file
from edgefleet.node.profiles import MiB
from edgefleet.proto.topics import check_name

log = logging.getLogger("edgefleet.node.adapters")
LOAD_TIMEOUT_S = 60.0


class AdapterManager:
    def __init__(self, engine: Engine, model_path: Path, memory: dict[str, int]) -> None:
        self.engine = engine
        self.model_path = model_path
        self.memory = memory
        self._shapes: tuple[str, dict[str, tuple[int, ...]]] | None = None
        self._lock = threading.Lock()

    def _base(self) -> tuple[str, dict[str, tuple[int, ...]]]:
        if self._shapes is None:  # ~2 s for the metadata of a 135M model: only when an adapter comes
            self._shapes = base_tensor_shapes(self.model_path)
        return self._shapes

    def check_fit(self, label: str, architecture: str, tensors: dict[str, list[int]]) -> None:
        """Before any byte is fetched: does a manifest's description fit this node's base model?"""
        arch, shapes = self._base()
        if architecture != arch:
            raise InvalidRequest(f"{label} is for architecture {architecture!r}; this node's model is {arch!r}")
        for name, shape in tensors.items():
            base = shapes.get(name)
            if base is None:
                raise InvalidRequest(f"{label}: tensor {name} has no counterpart in this node's model")
            if list(base) != list(shape):
                raise InvalidRequest(f"{label}: tensor {name} fits shape {list(shape)}; this node's is {list(base)}")

    def install(self, name: str, version: str, path: Path, sha256: str | None = None) -> LoadedAdapter:
        """Check and load; raises InvalidRequest / OverBudget / ModelError naming the problem.

        `sha256`: the digest the file was verified with where it entered the node (assembled from a
        signed transfer, node/control/chunk_store.py), not computed again. None for a local file
        (EDGEFLEET_ADAPTERS), which is hashed here, once."""
        try:
            check_name("adapter", name)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        with self._lock:
            size = path.stat().st_size
            digest = sha256 or sha256_file(path)
            arch, shapes = self._base()
            rank = check_adapter(path, arch, shapes)
            current = self.engine.adapters.get(name)
            in_use = self.engine.adapters.total_bytes() - (current.size if current else 0)
            total = self.memory["total"] + in_use + size
            if total > self.memory["budget"]:
                raise OverBudget(
                    f"adapter {name}@{version} ({size / MiB:.1f} MiB) would bring the node to "
                    f"{total / MiB:.0f} MiB, over its budget of {self.memory['budget'] / MiB:.0f} MiB"
                )
            entry = self.engine.load_adapter(name, version, path, digest, size).result(LOAD_TIMEOUT_S)
            log.info(
                "adapter loaded",
                extra={"adapter": name, "version": version, "rank": rank, "size_bytes": size, "sha256": digest},
            )
            return entry

    def remove(self, name: str) -> None:
        self.engine.unload_adapter(name).result(LOAD_TIMEOUT_S)
        log.info("adapter removed", extra={"adapter": name})
