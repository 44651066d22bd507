"""What other threads may call on the engine: submit, cancel, embed, adapters, slot limit, counters.

Every call only checks what it can at once (capacity, context size, a failed engine) and puts a
command on the queue the engine thread takes between decode steps; nothing here touches llama.cpp
contexts. The engine thread itself is `Engine` (engine.py).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from edgefleet.node.engine.adapters import AdapterTable, LoadedAdapter
from edgefleet.node.engine.commands import (
    Cancel,
    Command,
    EmbedTask,
    LoadAdapter,
    Release,
    SlotLimit,
    Submit,
    UnloadAdapter,
)
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.sampler import Sampler
from edgefleet.node.engine.scheduler import Scheduler
from edgefleet.node.engine.types import GenerationRequest
from edgefleet.node.errors import ContextOverflow, QueueFull, Unavailable


@dataclass(frozen=True)
class EngineConfig:
    n_ctx_slot: int
    slots: int
    n_batch: int
    queue_limit: int
    threads: int
    embed_n_ctx: int = 512
    prefix_cache: bool = True
    adapter_quantum: int = 1
    adapt_threads: bool = True  # see thread_governor.py
    kv_type: str = "f16"  # the decode context's KV cells (node/engine/kv_type.py)
    # Fixed prompt prefixes' KV kept on disk across restarts (prefix_store.py); None: not kept.
    prefix_store_dir: Path | None = None
    prefix_store_bytes: int = 0
    model_sha256: str = ""  # part of every prefix store key


class EngineInbox:
    def __init__(self, model: LoadedModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.scheduler = Scheduler(
            config.slots,
            config.queue_limit,
            config.n_batch,
            config.n_ctx_slot,
            config.prefix_cache,
            config.adapter_quantum,
        )
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0  # submitted and not yet finished, for QueueFull at once
        self.accepting = True
        self.failure = ""  # why the engine thread died; empty while it is healthy
        self.adapters = AdapterTable()

    # -- called from other threads -------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def slots_busy(self) -> int:
        return self.scheduler.n_busy

    @property
    def queue_depth(self) -> int:
        return max(0, self._outstanding - self.scheduler.n_busy)

    def check_alive(self) -> None:
        """Raises Unavailable once the engine has failed."""
        if self.failure:
            raise Unavailable(f"engine failed: {self.failure}; the node is restarting, send the request elsewhere")

    def submit(self, req: GenerationRequest) -> None:
        """Queue a request; raises QueueFull or Unavailable at once, ContextOverflow if it cannot fit."""
        self.check_alive()
        if not self.accepting:
            raise Unavailable("node is shutting down and takes no new requests")
        limit = self.config.n_ctx_slot
        if len(req.prompt_tokens) >= limit:
            raise ContextOverflow(
                f"prompt is {len(req.prompt_tokens)} tokens; the context holds {limit} tokens per slot "
                f"and at least one must be left for the answer"
            )
        sampler = Sampler.for_params(self.model, req.params)
        with self._lock:
            capacity = self.scheduler.capacity()
            if self._outstanding >= capacity:
                sampler.free()
                raise QueueFull(
                    f"node is full: {self._outstanding} requests in flight, limit {capacity} "
                    f"({self.scheduler.slot_limit} slots + queue_length {self.config.queue_limit})"
                )
            self._outstanding += 1
        self._commands.put(Submit(req, sampler))

    def cancel(self, request_id: str) -> None:
        self._commands.put(Cancel(request_id))

    def load_adapter(self, name: str, version: str, path: Path, sha256: str, size: int) -> Future[LoadedAdapter]:
        """Load on the engine thread; the new version serves new requests once the future is done."""
        fut: Future[LoadedAdapter] = Future()
        self._commands.put(LoadAdapter(name, version, path, sha256, size, fut))
        return fut

    def unload_adapter(self, name: str) -> Future[bool]:
        fut: Future[bool] = Future()
        self._commands.put(UnloadAdapter(name, fut))
        return fut

    def discard(self, req: GenerationRequest) -> None:
        """A request that never reached submit(): give back its adapter pin."""
        if req.adapter is not None:
            self._commands.put(Release(req.adapter))

    def set_slot_limit(self, n: int) -> None:
        self._commands.put(SlotLimit(n))

    def embed(self, tokens: list[list[int]], normalize: bool) -> Future[list[list[float]]]:
        fut: Future[list[list[float]]] = Future()
        if self.failure:
            fut.set_exception(Unavailable(f"engine failed: {self.failure}"))
            return fut
        for t in tokens:
            if len(t) > self.config.embed_n_ctx:
                fut.set_exception(
                    ContextOverflow(f"text is {len(t)} tokens; embeddings take at most {self.config.embed_n_ctx}")
                )
                return fut
        self._commands.put(EmbedTask(tokens, normalize, fut))
        return fut
