"""The engine: one thread owns the llama.cpp contexts and runs the continuous-batching loop.

Loop (as llama.cpp's server): take new commands → let the scheduler pick the step → one
llama_decode over every active sequence → sample each → emit text → repeat; block when idle.
Other threads only enqueue commands (submit, cancel, embed) and read counters.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.node.engine.adapters import AdapterTable, LoadedAdapter
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
from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel, Sampler
from edgefleet.node.engine.scheduler import Scheduler, Sequence
from edgefleet.node.engine.text_stream import TextStream
from edgefleet.node.engine.thread_governor import ThreadGovernor
from edgefleet.node.engine.types import (
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    TextDelta,
    Usage,
)
from edgefleet.node.errors import ContextOverflow, EdgefleetError, EngineFailure, QueueFull, Unavailable

log = logging.getLogger("edgefleet.engine")


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


@dataclass
class _Active:
    """Per-sequence state that lives on the engine thread (sampler, text)."""

    sampler: Sampler
    text: TextStream


class Engine:
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
        self._active: dict[str, _Active] = {}
        self._samplers: dict[str, Sampler] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._ctx: DecodeContext | None = None
        self._embed_ctx: DecodeContext | None = None
        self.accepting = True
        self.adapters = AdapterTable()
        self._lora_state: tuple[Any, float] = (None, 1.0)  # what the context has set now
        self.tokens_generated = 0
        self.decode_steps = 0
        self.governor = ThreadGovernor(config.threads) if config.adapt_threads and config.threads > 1 else None
        self._threads_set = config.threads

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

    def submit(self, req: GenerationRequest) -> None:
        """Queue a request; raises QueueFull or Unavailable at once, ContextOverflow if it cannot fit."""
        if not self.accepting:
            raise Unavailable("node is shutting down and takes no new requests")
        limit = self.config.n_ctx_slot
        if len(req.prompt_tokens) >= limit:
            raise ContextOverflow(
                f"prompt is {len(req.prompt_tokens)} tokens; the context holds {limit} tokens per slot "
                f"and at least one must be left for the answer"
            )
        sampler = Sampler(
            self.model,
            req.params.temperature,
            req.params.top_k,
            req.params.top_p,
            req.params.seed,
            req.params.grammar,
        )
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
        for t in tokens:
            if len(t) > self.config.embed_n_ctx:
                fut.set_exception(
                    ContextOverflow(f"text is {len(t)} tokens; embeddings take at most {self.config.embed_n_ctx}")
                )
                return fut
        self._commands.put(EmbedTask(tokens, normalize, fut))
        return fut

    # -- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        cfg = self.config
        try:
            self._ctx = DecodeContext(self.model, cfg.n_ctx_slot * cfg.slots, cfg.n_batch, cfg.slots, cfg.threads)
            self._warm_up(self._ctx)
        except BaseException as e:  # surfaced to start()
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        embeds: list[EmbedTask] = []
        running = True
        while running:
            block = not (self.scheduler.has_work() or embeds)
            running = self._take_commands(block, embeds)
            if embeds:  # one embed task between decode steps bounds the stall
                self._run_embed(embeds.pop(0))
            if self.scheduler.has_work():
                try:
                    self._step()
                except EdgefleetError as e:
                    self._fail_all(e)
        self._shutdown(embeds)

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
        if self._lora_state[0] is handle and self._ctx is not None:
            self._ctx.set_lora(None, 1.0)
            self._lora_state = (None, 1.0)
        self.model.free_lora(handle)

    def _done(self, req: GenerationRequest) -> None:
        with self._lock:
            self._outstanding -= 1
        if req.adapter is not None:
            self._free_lora(self.adapters.release(req.adapter))

    def _reject(self, cmd: Submit, error: EdgefleetError) -> None:
        cmd.sampler.free()
        self._done(cmd.req)
        cmd.req.sink(Failed(error))

    def _cancel(self, request_id: str) -> None:
        seq = self.scheduler.cancel(request_id)
        if seq is None:
            return  # already finished
        if seq.slot >= 0 and self._ctx is not None:
            self._ctx.seq_rm(seq.slot)
        self._finish(seq, FinishReason.CANCELLED, time.monotonic(), from_scheduler=False)

    def _step(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        now = time.monotonic()
        plan = self.scheduler.schedule(now)
        for adm in plan.admissions:
            ctx.seq_rm(adm.slot, adm.keep, -1)
            sampler = self._samplers.pop(adm.seq.request_id)
            self._active[adm.seq.request_id] = _Active(sampler, TextStream(adm.seq.req.params.stop))
        if not plan.items:
            return
        use = plan.items[0].seq.req.adapter  # one adapter group per step
        want = (use.handle, use.scale) if use is not None else (None, 1.0)
        timed = all(len(item.tokens) == 1 for item in plan.items)  # decode-only steps are comparable
        if want != self._lora_state:
            ctx.set_lora(*want)
            self._lora_state = want
            timed = False  # the graph is built again: not a typical step
        threads = self.governor.threads_for_step(now) if self.governor is not None else self._threads_set
        if threads != self._threads_set:
            ctx.set_threads(threads)
            self._threads_set = threads
        batch = ctx.batch
        batch.clear()
        sample_at: list[tuple[Sequence, int]] = []
        for item in plan.items:
            pos = item.start_pos
            last = len(item.tokens) - 1
            for j, tok in enumerate(item.tokens):
                idx = batch.add(tok, pos + j, item.seq.slot, item.logits and j == last)
            if item.logits:
                sample_at.append((item.seq, idx))
        started = time.perf_counter()
        ctx.decode()
        took = time.perf_counter() - started
        self.decode_steps += 1
        self.scheduler.decoded(plan)
        now = time.monotonic()
        if self.governor is not None and timed:
            reason = self.governor.observe(threads, batch.n, took, now)
            if reason:
                log.info("compute threads changed", extra={"threads": self.governor.current, "reason": reason})
        for seq, idx in sample_at:
            self._sample(seq, idx, now)

    def _sample(self, seq: Sequence, idx: int, now: float) -> None:
        assert self._ctx is not None
        active = self._active[seq.request_id]
        token = active.sampler.sample(self._ctx, idx)
        if seq.n_generated == 0:
            seq.first_token_at = now
        seq.last_token_at = now
        self.tokens_generated += 1
        if self.model.is_eog(token):
            seq.n_generated += 1
            self._finish(seq, FinishReason.STOP, now)
            return
        text = active.text.feed(self.model.piece(token))
        if text:
            seq.req.sink(TextDelta(text))
        if active.text.stopped:
            seq.n_generated += 1
            self._finish(seq, FinishReason.STOP, now)
        elif seq.n_generated + 1 >= seq.req.params.max_tokens or seq.n_past >= self.config.n_ctx_slot:
            seq.n_generated += 1
            self._finish(seq, FinishReason.LENGTH, now)
        else:
            self.scheduler.accept_token(seq, token)

    def _finish(self, seq: Sequence, reason: FinishReason, now: float, from_scheduler: bool = True) -> None:
        if from_scheduler:
            self.scheduler.finish(seq)
        active = self._active.pop(seq.request_id, None)
        sampler = active.sampler if active else self._samplers.pop(seq.request_id, None)
        if sampler is not None:
            sampler.free()
        tail = active.text.flush() if active and reason is not FinishReason.CANCELLED else ""
        self._done(seq.req)
        arrived = seq.req.arrived
        admitted = seq.admitted_at or now
        first = seq.first_token_at or now
        n = seq.n_generated
        rate = (n - 1) / (seq.last_token_at - first) if n > 1 and seq.last_token_at > first else 0.0
        usage = Usage(
            prompt_tokens=len(seq.req.prompt_tokens),
            completion_tokens=n,
            cached_prompt_tokens=seq.cached_tokens,
            queue_ms=(admitted - arrived) * 1000.0,
            time_to_first_token_ms=(first - arrived) * 1000.0 if seq.first_token_at else 0.0,
            tokens_per_second=rate,
            total_ms=(now - arrived) * 1000.0,
        )
        seq.req.sink(Finished(reason, usage, tail))

    def _fail_all(self, error: EdgefleetError) -> None:
        log.error("decode step failed, failing every running request", extra={"error": str(error)})
        for seq in list(self.scheduler.running):
            self.scheduler.cancel(seq.request_id)
            if self._ctx is not None:
                self._ctx.seq_rm(seq.slot)
            active = self._active.pop(seq.request_id, None)
            if active:
                active.sampler.free()
            self._done(seq.req)
            seq.req.sink(Failed(error))

    def _warm_up(self, ctx: DecodeContext) -> None:
        """One throw-away decode, so the first request does not pay for graph allocation."""
        ctx.batch.clear()
        ctx.batch.add(0, 0, 0, True)
        ctx.decode()
        ctx.seq_rm(0)

    def _run_embed(self, task: EmbedTask) -> None:
        if task.future.done():  # cancelled by the caller
            return
        try:
            if self._embed_ctx is None:  # created on first use: ~100 MiB a node may never need
                cfg = self.config
                self._embed_ctx = DecodeContext(
                    self.model, cfg.embed_n_ctx, cfg.embed_n_ctx, 1, cfg.threads, embeddings=True
                )
            ctx = self._embed_ctx
            # Embeddings follow the governor's choice (the embed context is not timed itself).
            ctx.set_threads(self.governor.current if self.governor is not None else self.config.threads)
            vectors = []
            n_embd = self.model.meta.n_embd
            for tokens in task.tokens:
                ctx.clear()
                ctx.batch.clear()
                for i, tok in enumerate(tokens):
                    ctx.batch.add(tok, i, 0, True)
                ctx.decode()
                vec = ctx.embedding(0, n_embd)
                if task.normalize:
                    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
                    vec = [v / norm for v in vec]
                vectors.append(vec)
            task.future.set_result(vectors)
        except EdgefleetError as e:
            task.future.set_exception(e)
        except Exception as e:  # keep the engine alive whatever llama.cpp says
            task.future.set_exception(EngineFailure(f"embedding failed: {e}"))

    def _shutdown(self, embeds: list[EmbedTask]) -> None:
        for seq in list(self.scheduler.waiting) + self.scheduler.running:
            self._cancel(seq.request_id)
        for task in embeds:
            task.future.set_exception(Unavailable("node is shutting down"))
        while True:  # requests submitted after the stop command
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, Submit):
                self._reject(cmd, Unavailable("node is shutting down"))
            elif isinstance(cmd, EmbedTask | LoadAdapter | UnloadAdapter):
                cmd.future.set_exception(Unavailable("node is shutting down"))
        for ctx in (self._ctx, self._embed_ctx):
            if ctx is not None:
                ctx.close()
        self._ctx = self._embed_ctx = None
