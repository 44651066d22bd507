"""The engine's side of the prefix store: one sequence's KV cells out of and into a decode context.

Runs on the engine thread (llama.cpp contexts are not thread-safe) except the file writes, which a
writer thread does so a decode step never waits for the disk. llama.cpp's per-sequence state API
(`llama_state_seq_get_data` / `llama_state_seq_set_data`) copies the cells of one sequence id: a
slot holding exactly a prefix's tokens saves exactly that prefix.
"""

from __future__ import annotations

import ctypes
import logging
from concurrent.futures import ThreadPoolExecutor

import llama_cpp

from edgefleet.node.engine.adapters import AdapterTable
from edgefleet.node.engine.llama_backend import DecodeContext
from edgefleet.node.engine.prefix_store import PrefixKey, PrefixStore
from edgefleet.node.engine.scheduler import Scheduler, Sequence
from edgefleet.node.engine.types import AdapterUse

log = logging.getLogger("edgefleet.prefix_store")


class PrefixKV:
    def __init__(self, store: PrefixStore, ctx: DecodeContext, adapters: AdapterTable) -> None:
        self.store = store
        self.ctx = ctx
        self.adapters = adapters
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="edgefleet-prefix-writer")
        self.restored = 0  # counters, for tests and the benchmark
        self.saved = 0

    def adapter_id(self, use: AdapterUse | None) -> str:
        """What an adapter's cells depend on: its content (sha256) and scale, not only its name."""
        if use is None:
            return ""
        entry = self.adapters.get(use.name)
        sha = entry.sha256 if entry is not None and entry.handle is use.handle else "unknown"
        return f"{use.name}@{use.version}#{sha}*{use.scale:g}"

    def _key(self, seq: Sequence) -> PrefixKey:
        return self.store.key(seq.req.prompt_tokens[: seq.req.prefix_len], self.adapter_id(seq.req.adapter))

    # -- restore ---------------------------------------------------------------------------
    def _set(self, slot: int, key: PrefixKey, state: bytes) -> bool:
        """Replace the slot's cells by the state's; False (slot emptied, entry dropped) if refused."""
        self.ctx.seq_rm(slot)
        buf = (ctypes.c_ubyte * len(state)).from_buffer_copy(state)
        n = llama_cpp.llama_state_seq_set_data(self.ctx.ptr, buf, len(state), slot)
        last = llama_cpp.llama_memory_seq_pos_max(self.ctx.mem, slot)
        if n == len(state) and last == len(key.tokens) - 1:
            return True
        self.ctx.seq_rm(slot)
        self.store.forget(key, f"llama.cpp did not take the state ({n} of {len(state)} bytes, last position {last})")
        return False

    def restore(self, seq: Sequence, slot: int) -> int:
        """Scheduler hook: the request's fixed prefix into `slot` from the store (see Scheduler.restore)."""
        key = self._key(seq)
        state = self.store.load(key)
        if state is None:
            return 0
        if not self._set(slot, key, state):
            return -1
        self.restored += 1
        log.info(
            "prefix KV restored",
            extra={"request_id": seq.request_id, "slot": slot, "tokens": len(key.tokens), "bytes": len(state)},
        )
        return len(key.tokens)

    def preload(self, scheduler: Scheduler) -> int:
        """At startup: the most recently used base-model prefixes into the empty slots, one each."""
        n = 0
        for slot, tokens in zip(scheduler.slots, self.store.recent(""), strict=False):
            key = self.store.key(tokens)
            state = self.store.load(key)
            if state is None or not self._set(slot.id, key, state):
                continue
            slot.tokens, slot.adapter = list(tokens), ""
            n += 1
        if n:
            log.info("prefix KV preloaded", extra={"prefixes": n})
        return n

    # -- save ------------------------------------------------------------------------------
    def save(self, seq: Sequence) -> None:
        """The slot holds exactly the request's fixed prefix now: copy its cells, write them aside."""
        key = self._key(seq)
        if self.store.has(key):
            return
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ptr, seq.slot)
        buf = (ctypes.c_ubyte * size)()
        n = llama_cpp.llama_state_seq_get_data(self.ctx.ptr, buf, size, seq.slot)
        if n != size:
            log.warning("prefix KV not copied", extra={"request_id": seq.request_id, "bytes": n, "size": size})
            return
        self.saved += 1
        self._writer.submit(self.store.save, key, bytes(buf), seq.req.prefix_source)

    def after_step(self, seqs: list[Sequence]) -> None:
        """Save the prefixes whose prefill just reached their end (Sequence.save_at)."""
        for seq in seqs:
            if seq.save_at and seq.n_past == seq.save_at:
                seq.save_at = 0
                self.save(seq)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
