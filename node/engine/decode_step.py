"""One decode step: a scheduler plan in, one llama_decode, the positions to sample from out.

Holds what the llama.cpp context has set between steps (the LoRA adapter and its scale, the
compute threads) so it is changed only when a step needs something else, and times plain decode
steps for the thread governor.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil

from edgefleet.node.engine.llama_backend import DecodeContext
from edgefleet.node.engine.scheduler import BatchItem, StepPlan
from edgefleet.node.engine.thread_governor import ThreadGovernor

log = logging.getLogger("edgefleet.engine")


class StepDecoder:
    def __init__(self, ctx: DecodeContext, threads: int, governor: ThreadGovernor | None) -> None:
        self.ctx = ctx
        self.governor = governor
        self.threads_set = threads
        self.lora_state: tuple[Any, float] = (None, 1.0)  # what the context has set now
        self.steps = 0
        self.last_decode: tuple[int, float] | None = None  # (tokens, CPU seconds) of the last decode-only step

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

    def decode(self, plan: StepPlan, now: float) -> list[tuple[BatchItem, int]]:
        """Decode the plan's batch; returns (item, logits index) for each item to sample.

        An item with a draft has logits at its pending token and at every draft token: the index is
        the pending token's, the drafts' follow it.
        """
        ctx = self.ctx
        use = plan.items[0].seq.req.adapter  # one adapter group per step
        want = (use.handle, use.scale) if use is not None else (None, 1.0)
        decode_only = all(len(item.tokens) == 1 + len(item.draft) for item in plan.items)  # no prompt chunk
        timed = decode_only and not any(item.draft for item in plan.items)  # one token each: comparable
        if want != self.lora_state:
            ctx.set_lora(*want)
            self.lora_state = want
            timed = decode_only = False  # the graph is built again: not a typical step
        threads = self.governor.threads_for_step(now) if self.governor is not None else self.threads_set
        if threads != self.threads_set:
            ctx.set_threads(threads)
            self.threads_set = threads
        batch = ctx.batch
        batch.clear()
        sample_at: list[tuple[BatchItem, int]] = []
        for item in plan.items:
            pos = item.start_pos
            first = len(item.tokens) - 1 - len(item.draft)  # the first position with logits
            for j, tok in enumerate(item.tokens):
                idx = batch.add(tok, pos + j, item.seq.slot, item.logits and j >= first)
            if item.logits:
                sample_at.append((item, idx - len(item.draft)))
        started, cpu = time.perf_counter(), time.thread_time()
        ctx.decode()
        took = time.perf_counter() - started
        self.steps += 1
        # CPU time of this thread (ggml's first worker): what the step's work costs, without the time
        # other processes held the core (speculation.py's StepCosts)
        self.last_decode = (batch.n, time.thread_time() - cpu) if decode_only else None
        if self.governor is not None and timed:
            now = time.monotonic()
            idle = machine_idle_s() if self.governor.idle_wanted(now) else None
            reason = self.governor.observe(threads, batch.n, took, now, idle)
            if reason:
                log.info("compute threads changed", extra={"threads": self.governor.current, "reason": reason})
        return sample_at


def machine_idle_s() -> float:
    """Idle CPU seconds so far of the cores this process may run on (`observe`'s `idle_total_s`)."""
    cpus = psutil.cpu_times(percpu=True)
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(cpus))
    return float(sum(c.idle + getattr(c, "iowait", 0.0) for i, c in enumerate(cpus) if i in mine))
