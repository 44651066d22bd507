"""One decode step: a scheduler plan in, one llama_decode, the positions to sample from out.

Holds what the llama.cpp context has set between steps (the LoRA adapter and its scale, the
compute threads) so it is changed only when a step needs something else, and times plain decode
steps for the thread governor.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edgefleet.node.engine.llama_backend import DecodeContext
from edgefleet.node.engine.scheduler import Sequence, StepPlan
from edgefleet.node.engine.thread_governor import ThreadGovernor

log = logging.getLogger("edgefleet.engine")


class StepDecoder:
    def __init__(self, ctx: DecodeContext, threads: int, governor: ThreadGovernor | None) -> None:
        self.ctx = ctx
        self.governor = governor
        self.threads_set = threads
        self.lora_state: tuple[Any, float] = (None, 1.0)  # what the context has set now
        self.steps = 0

    def warm_up(self) -> None:
        """One throw-away decode, so the first request does not pay for graph allocation."""
        self.ctx.batch.clear()
        self.ctx.batch.add(0, 0, 0, True)
        self.ctx.decode()
        self.ctx.seq_rm(0)

    def unset_lora(self, handle: Any) -> None:
        """Before an adapter is freed: take it off the context if the context still has it."""
        if self.lora_state[0] is handle:
            self.ctx.set_lora(None, 1.0)
            self.lora_state = (None, 1.0)

    def decode(self, plan: StepPlan, now: float) -> list[tuple[Sequence, int]]:
        """Decode the plan's batch; returns (sequence, logits index) for each sequence to sample."""
        ctx = self.ctx
        use = plan.items[0].seq.req.adapter  # one adapter group per step
        want = (use.handle, use.scale) if use is not None else (None, 1.0)
        timed = all(len(item.tokens) == 1 for item in plan.items)  # decode-only steps are comparable
        if want != self.lora_state:
            ctx.set_lora(*want)
            self.lora_state = want
            timed = False  # the graph is built again: not a typical step
        threads = self.governor.threads_for_step(now) if self.governor is not None else self.threads_set
        if threads != self.threads_set:
            ctx.set_threads(threads)
            self.threads_set = threads
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
        self.steps += 1
        if self.governor is not None and timed:
            reason = self.governor.observe(threads, batch.n, took, time.monotonic())
            if reason:
                log.info("compute threads changed", extra={"threads": self.governor.current, "reason": reason})
        return sample_at
