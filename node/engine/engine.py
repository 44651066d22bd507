"""The engine: one thread owns the llama.cpp contexts and runs the continuous-batching loop.

Loop (as llama.cpp's server): take new commands → let the scheduler pick the step → one
llama_decode over every active sequence → sample each → emit text → repeat; block when idle.
A greedy sequence may add prompt-lookup drafts to its step (speculation.py); the engine samples along
the draft while the sampler confirms it, each token on the same path as any other (_verify).
Other threads only enqueue commands (submit, cancel, embed) and read counters.

If anything unexpected happens on the engine thread, the engine fails loudly: every request in
flight or queued ends with EngineFailure (gRPC INTERNAL), new ones are refused with Unavailable
("engine failed: …"), and `on_failure` callbacks tell the node, which turns its health to
NOT_SERVING, publishes `failed` and exits for its supervisor to restart it. A sink that raises
fails its one request, never the engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.node.engine.adapters import LoadedAdapter
from edgefleet.node.engine.commands import (
    Cancel,
    Command,
    EmbedTask,
    LoadAdapter,
    Release,
    SlotLimit,
    Stop,
    Submit,
    UnloadAdapter,
)
from edgefleet.node.engine.decode_step import StepDecoder
from edgefleet.node.engine.embedding import Embedder
from edgefleet.node.engine.engine_inbox import EngineConfig, EngineInbox
from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel
from edgefleet.node.engine.prefix_kv import PrefixKV
from edgefleet.node.engine.prefix_store import PrefixStore
from edgefleet.node.engine.sampler import Sampler
from edgefleet.node.engine.scheduler import BatchItem, Sequence
from edgefleet.node.engine.speculation import SpeculationPolicy
from edgefleet.node.engine.text_stream import TextStream
from edgefleet.node.engine.thread_governor import ThreadGovernor
from edgefleet.node.engine.types import (
    EngineObserver,
    Event,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    TextDelta,
)
from edgefleet.node.errors import EdgefleetError, EngineFailure, QueueFull, Unavailable
from edgefleet.plumbing import failpoints

log = logging.getLogger("edgefleet.engine")


@dataclass
class _Active:
    """Per-sequence state that lives on the engine thread (sampler, text)."""

    sampler: Sampler
    text: TextStream


class Engine(EngineInbox):
    def __init__(self, model: LoadedModel, config: EngineConfig, speculation: SpeculationPolicy | None = None) -> None:
        super().__init__(model, config)
        self.scheduler.speculation = speculation  # draftless speculation (speculation.py); None: off
        self.drafted_tokens = 0  # draft tokens verified, and those the sampler confirmed
        self.accepted_tokens = 0
        self._active: dict[str, _Active] = {}
        self._samplers: dict[str, Sampler] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._ctx: DecodeContext | None = None
        self._embedder = Embedder(model, config.embed_n_ctx)
        self.on_failure: list[Callable[[str], None]] = []  # called once, on the engine thread
        self.observer: EngineObserver | None = None  # metrics, when the node exports them
        self._decoder: StepDecoder | None = None
        self.prefixes: PrefixKV | None = None  # the prefix store, once the context exists
        self.tokens_generated = 0
        self.kv_type = config.kv_type  # the KV cells the decode context got (set when it is created)
        self.governor = ThreadGovernor(config.threads) if config.adapt_threads and config.threads > 1 else None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgefleet-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel whatever is left, free the contexts and end the thread."""
        self.accepting = False
        if self._thread and self._thread.is_alive():
            self._commands.put(Stop())
            self._thread.join(timeout)

    # -- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        cfg = self.config
        try:
            self._ctx = DecodeContext(
                self.model, cfg.n_ctx_slot * cfg.slots, cfg.n_batch, cfg.slots, cfg.threads, kv_type=cfg.kv_type
            )
            self.kv_type = self._ctx.kv_type  # f16 where llama.cpp refused q8_0
            self._decoder = StepDecoder(self._ctx, cfg.threads, self.governor)
            self._decoder.warm_up()
            self._open_prefix_store(self._ctx)
        except BaseException as e:  # surfaced to start()
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        embeds: list[EmbedTask] = []
        try:
            self._loop(embeds)
        except BaseException as e:  # anything unexpected: the engine can no longer be trusted
            self._die(e, embeds)
            return
        self._shutdown(embeds)

    def _loop(self, embeds: list[EmbedTask]) -> None:
        running = True
        while running:
            block = not (self.scheduler.has_work() or embeds)
            running = self._take_commands(block, embeds)
            if embeds:  # one embed task between decode steps bounds the stall
                self._embedder.run(embeds.pop(0), self._threads_now())
            if self.scheduler.has_work():
                try:
                    self._step()
                except EdgefleetError as e:
                    self._fail_all(e)

    def _open_prefix_store(self, ctx: DecodeContext) -> None:
        """Fixed prefixes saved before (this model, this KV type) into the slots, and the hooks."""
        cfg = self.config
        if cfg.prefix_store_dir is None or cfg.prefix_store_bytes <= 0 or not cfg.prefix_cache:
            return
        kv_type = str(getattr(ctx, "kv_type", None) or "f16")
        try:
            store = PrefixStore(cfg.prefix_store_dir, cfg.prefix_store_bytes, cfg.model_sha256, kv_type)
        except OSError as e:  # a node without its prefix store still serves, each prefix read again
            log.warning("prefix store not available", extra={"directory": str(cfg.prefix_store_dir), "error": str(e)})
            return
        self.prefixes = PrefixKV(store, ctx, self.adapters)
        self.scheduler.restore = self.prefixes.restore
        self.prefixes.preload(self.scheduler)

    def _threads_now(self) -> int:
        return self.governor.current if self.governor is not None else self.config.threads

    def _take_commands(self, block: bool, embeds: list[EmbedTask]) -> bool:
        """Apply every queued command; wait for one when idle. False once told to stop."""
        while True:
            try:
                cmd = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(cmd, Submit):
                try:
                    self.scheduler.add(cmd.req)
                except QueueFull as e:  # slots shrank (thermal) since submit() counted it
                    self._reject(cmd, e)
                    continue
                self._samplers[cmd.req.request_id] = cmd.sampler
            elif isinstance(cmd, Cancel):
                self._cancel(cmd.request_id)
            elif isinstance(cmd, SlotLimit):
                self.scheduler.set_slot_limit(cmd.n)
            elif isinstance(cmd, EmbedTask):
                embeds.append(cmd)
            elif isinstance(cmd, LoadAdapter):
                self._load_adapter(cmd)
            elif isinstance(cmd, UnloadAdapter):
                self._free_lora(self.adapters.remove(cmd.name))
                cmd.future.set_result(True)
            elif isinstance(cmd, Release):
                self._free_lora(self.adapters.release(cmd.use))
            else:
                return False

    def _load_adapter(self, cmd: LoadAdapter) -> None:
        try:
            handle = self.model.load_lora(cmd.path)
        except EdgefleetError as e:
            cmd.future.set_exception(e)
            return
        entry = LoadedAdapter(cmd.name, cmd.version, cmd.sha256, cmd.size, handle)
        self._free_lora(self.adapters.install(entry))
        cmd.future.set_result(entry)

    def _free_lora(self, handle: Any) -> None:
        """Free a retired adapter nobody uses; unset it first if the context still has it."""
        if handle is None:
            return
        if self._decoder is not None:
            self._decoder.unset_lora(handle)
        self.model.free_lora(handle)

    def _done(self, req: GenerationRequest) -> None:
        with self._lock:
            self._outstanding -= 1
        if req.adapter is not None:
            self._free_lora(self.adapters.release(req.adapter))

    def _emit(self, req: GenerationRequest, event: Event) -> bool:
        """Hand an event to the request's sink; a sink that raises fails its request, not the engine."""
        try:
            failpoints.hit("engine.emit")
            req.sink(event)
            return True
        except Exception as e:
            log.error(
                "an answer could not be delivered; that request fails",
                exc_info=e,
                extra={"request_id": req.request_id, "event": type(event).__name__},
            )
            return False

    def _reject(self, cmd: Submit, error: EdgefleetError) -> None:
        cmd.sampler.free()
        self._done(cmd.req)
        self._emit(cmd.req, Failed(error))

    def _refuse(self, cmd: Command, error: EdgefleetError) -> None:
        """Answer a command the engine will never carry out (stopped or failed)."""
        if isinstance(cmd, Submit):
            cmd.sampler.free()
            with self._lock:
                self._outstanding -= 1
            self._emit(cmd.req, Failed(error))
        elif isinstance(cmd, EmbedTask | LoadAdapter | UnloadAdapter) and not cmd.future.done():
            cmd.future.set_exception(error)

    def _cancel(self, request_id: str, error: EdgefleetError | None = None) -> None:
        """End a request wherever it is: `cancelled`, or failed with `error`."""
        seq = self.scheduler.cancel(request_id)
        if seq is None:
            return  # already finished
        if seq.slot >= 0 and self._ctx is not None:
            self._ctx.seq_rm(seq.slot)
        if error is None:
            self._finish(seq, FinishReason.CANCELLED, time.monotonic())
            return
        self._free_sampler(seq.request_id)
        self._done(seq.req)
        self._emit(seq.req, Failed(error))

    def _free_sampler(self, request_id: str) -> TextStream | None:
        active = self._active.pop(request_id, None)
        sampler = active.sampler if active else self._samplers.pop(request_id, None)
        if sampler is not None:
            sampler.free()
        return active.text if active else None

    def _step(self) -> None:
        failpoints.hit("engine.step")
        ctx = self._ctx
        assert ctx is not None and self._decoder is not None
        now = time.monotonic()
        plan = self.scheduler.schedule(now)
        for adm in plan.admissions:
            ctx.seq_rm(adm.slot, adm.keep, -1)
            sampler = self._samplers.pop(adm.seq.request_id)
            self._active[adm.seq.request_id] = _Active(sampler, TextStream(adm.seq.req.params.stop))
        if not plan.items:
            return
        sample_at = self._decoder.decode(plan, now)
        policy = self.scheduler.speculation
        if policy is not None and self._decoder.last_decode is not None:
            policy.timed(*self._decoder.last_decode)
        self.scheduler.decoded(plan)
        if self.prefixes is not None:
            self.prefixes.after_step([item.seq for item in plan.items])
        now = time.monotonic()
        for item, idx in sample_at:
            if item.draft:
                self._verify(item, idx, now)
            else:
                self._sample(item.seq, idx, now)

    def _verify(self, item: BatchItem, idx: int, now: float) -> None:
        """Sample along a draft while the sampler confirms it; drop the KV cells of the rest.

        Each sampled token takes the one path every token takes (_sample); a confirmed draft token's
        cell becomes the slot's (scheduler.accepted) and the next position is sampled. The first
        token that differs from the draft, or that ends the sequence, ends the step for it.
        """
        assert self._ctx is not None
        seq = item.seq
        accepted = 0
        for j, proposed in enumerate(item.draft):
            token = self._sample(seq, idx + j, now)
            if token != proposed:
                break
            self.scheduler.accepted(seq, proposed)
            accepted += 1
        else:
            self._sample(seq, idx + len(item.draft), now)
        if accepted < len(item.draft):
            self._ctx.seq_rm(seq.slot, seq.n_past, -1)  # the cells of unconfirmed drafts
        drafted = len(item.draft)
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        policy = self.scheduler.speculation
        if policy is not None:
            policy.verified(seq.draft_state, drafted, accepted)
        if self.observer is not None:
            self.observer.speculated(drafted, accepted)

    def _sample(self, seq: Sequence, idx: int, now: float) -> int | None:
        """Sample `seq` at logits `idx`; the token when the sequence goes on, None when it ended here."""
        assert self._ctx is not None
        active = self._active[seq.request_id]
        token = active.sampler.sample(self._ctx, idx)
        self.tokens_generated += 1
        eog = self.model.is_eog(token)
        params = seq.req.params
        text = "" if eog else active.text.feed(self.model.piece(token, token in params.text_tokens))
        if text and not self._emit(seq.req, TextDelta(text)):
            self._cancel(seq.request_id, EngineFailure("the answer could not be delivered; the request was stopped"))
            return None
        previous = seq.last_token_at
        reason = self.scheduler.sampled(seq, token, now, end_of_generation=eog, stop_matched=active.text.stopped)
        if self.observer is not None and previous:
            self.observer.token_gap(now - previous)
        if reason is not None:
            self._finish(seq, reason, now)
            return None
        return token

    def _finish(self, seq: Sequence, reason: FinishReason, now: float) -> None:
        """The scheduler has let go of `seq`: free its sampler, send the usage."""
        text = self._free_sampler(seq.request_id)
        tail = text.flush() if text is not None and reason is not FinishReason.CANCELLED else ""
        self._done(seq.req)
        usage = seq.usage(now)
        if self.observer is not None:
            self.observer.finished(reason, usage)
        self._emit(seq.req, Finished(reason, usage, tail))

    def _fail_all(self, error: EdgefleetError) -> None:
        log.error("decode step failed, failing every running request", extra={"error": str(error)})
        for seq in list(self.scheduler.running):
            self._cancel(seq.request_id, error)

    def _die(self, error: BaseException, embeds: list[EmbedTask]) -> None:
        """The engine thread failed: fail everything, tell the node, then only refuse until stopped."""
        reason = f"{type(error).__name__}: {error}"
        self.failure = reason
        self.accepting = False
        log.critical("engine failed; every request fails and the node exits", exc_info=error, extra={"reason": reason})
        for callback in self.on_failure:  # first: the node stops serving before any client hears
            try:
                callback(reason)
            except Exception:
                log.exception("engine failure callback raised")
        failed = EngineFailure(f"engine failed: {reason}")
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            self.scheduler.cancel(seq.request_id)
            self._free_sampler(seq.request_id)
            with self._lock:
                self._outstanding -= 1
            self._emit(seq.req, Failed(failed))
        for task in embeds:
            task.future.set_exception(failed)
        refused = Unavailable(f"engine failed: {reason}")
        while not isinstance(cmd := self._commands.get(), Stop):  # a request that raced the failure
            self._refuse(cmd, refused)
        self._close_contexts()

    def _shutdown(self, embeds: list[EmbedTask]) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            self._cancel(seq.request_id)
        stopping = Unavailable("node is shutting down")
        for task in embeds:
            task.future.set_exception(stopping)
        while True:  # requests submitted after the stop command
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            self._refuse(cmd, stopping)
        self._close_contexts()

    def _close_contexts(self) -> None:
        if self.prefixes is not None:
            self.prefixes.close()  # the writes under way finish
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self._embedder.close()
