"""Continuous-batching policy: which sequences go into the next decode step.

Data in, data out, no llama.cpp: the engine feeds it requests, sampled tokens and
finishes, and asks it for the next step. Like llama.cpp's server loop, every running
sequence contributes its one new token per step, and prompts are prefilled in chunks
from what is left of the step's token budget (n_batch), so a long prompt joins without
stalling the others for more than a step.

Slots are llama.cpp sequence ids. A finished slot keeps its KV cells and the tokens they
hold; a new request takes the free slot that shares its longest prefix (same adapter), and
only the rest of its prompt is prefilled, unless another slot keeps its adapter group in
consecutive slots (llama.cpp decodes a run of consecutive sequence ids as one micro-batch).
A request's fixed prefix (`prefix_len`: chat preamble, template head) that no slot holds may
be restored from the prefix store (`restore`, set by the engine); if it is not there, the
prefill stops once at the prefix's end (`save_at`) so the engine can save exactly the
prefix's cells.

llama.cpp applies LoRA adapters per context, so one decode step serves one adapter group
(adapter, version and scale; the base model is the group ""). Steps alternate between the
groups with work, least recently served first, so no group starves; a sequence keeps its
adapter for its whole life, since its KV cells were computed with it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.node.engine.speculation import DraftState, SpeculationPolicy
from edgefleet.node.engine.types import FinishReason, GenerationRequest, Usage
from edgefleet.node.errors import QueueFull


@dataclass
class Sequence:
    req: GenerationRequest
    slot: int = -1
    n_past: int = 0  # tokens whose KV is in the slot
    pending: list[int] = field(default_factory=list)  # tokens to decode next
    n_prompt_left: int = 0  # prompt tokens not yet decoded
    n_generated: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the slot's cache
    save_at: int = 0  # the fixed prefix ends here and is not stored yet: the engine saves it then
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    draft_state: DraftState = field(default_factory=DraftState)  # speculation.py: its drafts and back-off

    @property
    def request_id(self) -> str:
        return self.req.request_id

    @property
    def prefilling(self) -> bool:
        return self.n_prompt_left > 0

    @property
    def group(self) -> str:
        return self.req.adapter.group if self.req.adapter else ""

    def usage(self, now: float) -> Usage:
        """What this sequence used and how fast, as of `now` (its end)."""
        arrived = self.req.arrived
        admitted = self.admitted_at or now
        first = self.first_token_at or now
        n = self.n_generated
        rate = (n - 1) / (self.last_token_at - first) if n > 1 and self.last_token_at > first else 0.0
        return Usage(
            prompt_tokens=len(self.req.prompt_tokens),
            completion_tokens=n,
            cached_prompt_tokens=self.cached_tokens,
            queue_ms=(admitted - arrived) * 1000.0,
            time_to_first_token_ms=(first - arrived) * 1000.0 if self.first_token_at else 0.0,
            tokens_per_second=rate,
            total_ms=(now - arrived) * 1000.0,
        )


@dataclass
class Slot:
    id: int
    seq: Sequence | None = None
    tokens: list[int] = field(default_factory=list)  # tokens whose KV the slot holds
    adapter: str = ""  # adapter group of the KV cells


@dataclass(frozen=True)
class Admission:
    seq: Sequence
    slot: int
    keep: int  # KV cells [0, keep) are reused; the engine removes the rest


@dataclass(frozen=True)
class BatchItem:
    seq: Sequence
    tokens: list[int]
    start_pos: int
    logits: bool  # sample after this chunk (its last token)
    # Speculation: `tokens` is [pending, *draft], with logits at every position from the pending
    # token on; the engine keeps the drafts the sampler confirms (`accepted`) and drops the rest.
    draft: tuple[int, ...] = ()


@dataclass(frozen=True)
class StepPlan:
    admissions: list[Admission]
    items: list[BatchItem]
    group: str = ""  # the adapter group this step decodes

    @property
    def n_tokens(self) -> int:
        return sum(len(i.tokens) for i in self.items)


MIN_PREFIX_REUSE = 16  # tokens: a shorter shared prefix does not decide which slot a request takes


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def consecutive_runs(slot_ids: list[int]) -> int:
    """How many runs of consecutive ids `slot_ids` form: the micro-batches llama.cpp decodes them in."""
    ids = sorted(slot_ids)
    return sum(1 for i, x in enumerate(ids) if i == 0 or x != ids[i - 1] + 1)


class Scheduler:
    def __init__(
        self,
        n_slots: int,
        queue_limit: int,
        n_batch: int,
        n_ctx_slot: int,
        prefix_cache: bool = True,
        group_quantum: int = 1,
        speculation: SpeculationPolicy | None = None,
    ) -> None:
        if n_batch < n_slots:
            raise ValueError(f"n_batch ({n_batch}) must be at least the number of slots ({n_slots})")
        self.slots = [Slot(i) for i in range(n_slots)]
        self.queue_limit = queue_limit
        self.n_batch = n_batch
        self.n_ctx_slot = n_ctx_slot
        self.prefix_cache = prefix_cache
        self.group_quantum = group_quantum  # steps one adapter group may run in a row while others wait
        self.speculation = speculation  # None: no drafts
        self.slot_limit = n_slots
        self.waiting: deque[Sequence] = deque()
        self._served: dict[str, int] = {}  # adapter group → step it was last served
        self._steps = 0
        self._current: str | None = None  # the group of the last step, and how many steps in a row
        self._run_length = 0
        # (sequence, slot id) -> prefix tokens restored into the slot from the store; 0: none (the slot
        # is untouched), < 0: none and the slot's cells are gone
        self.restore: Callable[[Sequence, int], int] | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def running(self) -> list[Sequence]:
        return [s.seq for s in self.slots if s.seq is not None]

    @property
    def n_busy(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    def has_work(self) -> bool:
        return bool(self.waiting) or self.n_busy > 0

    def capacity(self) -> int:
        """Requests the node holds at most: usable slots plus the waiting queue."""
        return self.slot_limit + self.queue_limit

    def set_slot_limit(self, n: int) -> None:
        """Fewer slots (thermal throttling): running sequences finish, new ones wait."""
        self.slot_limit = max(1, min(n, len(self.slots)))

    # -- inputs --------------------------------------------------------------------------
    def add(self, req: GenerationRequest) -> Sequence:
        if self.n_busy + len(self.waiting) >= self.capacity():
            raise QueueFull(
                f"node is full: {self.n_busy} of {self.slot_limit} slots busy and "
                f"{len(self.waiting)} of {self.queue_limit} queued requests (queue_length limit)"
            )
        seq = Sequence(req=req, pending=list(req.prompt_tokens), n_prompt_left=len(req.prompt_tokens))
        self.waiting.append(seq)
        return seq

    def cancel(self, request_id: str) -> Sequence | None:
        """Remove a request wherever it is; the engine frees a running one's KV cells."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        for slot in self.slots:
            if slot.seq is not None and slot.seq.request_id == request_id:
                seq = slot.seq
                slot.seq = None
                slot.tokens = []  # its cells are removed, nothing stays cached
                return seq
        return None

    def sampled(
        self, seq: Sequence, token: int, now: float, *, end_of_generation: bool, stop_matched: bool
    ) -> FinishReason | None:
        """A token was sampled for `seq`: count it, then decide whether the sequence ends here.

        Returns why it finished (its slot is free then, its KV kept for prefix reuse), or None
        when generation goes on and the token is decoded next step. The engine only reports
        what it saw (end-of-generation token, a stop string in the text); the decision is here.
        """
        if seq.n_generated == 0:
            seq.first_token_at = now
        seq.last_token_at = now
        seq.n_generated += 1
        if end_of_generation or stop_matched:
            reason: FinishReason | None = FinishReason.STOP
        elif seq.n_generated >= seq.req.params.max_tokens or seq.n_past >= self.n_ctx_slot:
            reason = FinishReason.LENGTH
        else:
            seq.pending = [token]
            return None
        self._release(seq)
        return reason

    def _release(self, seq: Sequence) -> None:
        """seq is done; its slot keeps the KV of every decoded token for prefix reuse."""
        slot = self.slots[seq.slot]
        if slot.seq is seq:
            slot.seq = None
            if not self.prefix_cache:
                slot.tokens = []

    # -- the step ------------------------------------------------------------------------
    def _pick_slot(self, seq: Sequence) -> tuple[Slot, int]:
        """The free slot to run `seq` in, and how many of its cached tokens it reuses.

        First keep each adapter group in one run of consecutive slots: with a KV stream per
        sequence, llama.cpp splits a batch into micro-batches of consecutive sequence ids, so a
        group in slots 0 and 2 decodes as two micro-batches, each paying a step's fixed cost
        (bench/adapter_switch_profile.py: two groups taking turns reach 0.62x of one group's
        tokens/s interleaved, 0.89x in consecutive slots). So: the slot that leaves `seq`'s group
        in the fewest runs, then the one farthest from other groups' slots (room for each group to
        grow); then the longest reusable prefix, then the slot with the least cached. A shared
        prefix shorter than `MIN_PREFIX_REUSE` (a chat template's preamble) does not count as a
        reason to take a slot: otherwise every new prompt would overwrite another prompt's long
        cached prefix (a template's system prompt) for the sake of a few tokens. With one group
        running, every slot is as far from other groups as another.
        """
        group = seq.group
        own = [s.id for s in self.slots if s.seq is not None and s.seq.group == group]
        others = [s.id for s in self.slots if s.seq is not None and s.seq.group != group]
        best: Slot | None = None
        best_key: tuple[int, int, int, int] = (0, 0, 0, 0)
        best_keep = 0
        for slot in self.slots:
            if slot.seq is not None:
                continue
            keep = 0
            if self.prefix_cache and slot.adapter == group:
                keep = common_prefix(slot.tokens, seq.req.prompt_tokens)
            score = keep if keep >= MIN_PREFIX_REUSE else 0
            distance = min((abs(slot.id - i) for i in others), default=len(self.slots))
            key = (-consecutive_runs([*own, slot.id]), distance, score, -len(slot.tokens))
            if best is None or key > best_key:
                best, best_key, best_keep = slot, key, keep
        assert best is not None, "a free slot is picked only while one is free"
        # At least the last prompt token must be decoded to get logits to sample from.
        return best, min(best_keep, len(seq.req.prompt_tokens) - 1)

    def _stored_prefix(self, seq: Sequence, slot: Slot, keep: int) -> int:
        """Cached tokens after restoring `seq`'s fixed prefix into `slot` where the slot lacks it."""
        prefix = seq.req.prefix_len
        prompt = seq.req.prompt_tokens
        if self.restore is None or not self.prefix_cache or not MIN_PREFIX_REUSE <= prefix < len(prompt):
            return keep
        if keep >= prefix:
            return keep
        got = self.restore(seq, slot.id)
        if got > 0:
            slot.tokens = list(prompt[:got])
            return got
        seq.save_at = prefix
        return 0 if got < 0 else keep  # < 0: the slot's cells were cleared and the restore failed

    def schedule(self, now: float) -> StepPlan:
        admissions: list[Admission] = []
        while self.waiting and self.n_busy < self.slot_limit:
            seq = self.waiting.popleft()
            slot, keep = self._pick_slot(seq)
            keep = self._stored_prefix(seq, slot, keep)
            slot.seq, slot.adapter = seq, seq.group
            slot.tokens = slot.tokens[:keep]
            seq.slot, seq.n_past, seq.cached_tokens, seq.admitted_at = slot.id, keep, keep, now
            seq.pending = list(seq.req.prompt_tokens[keep:])
            seq.n_prompt_left = len(seq.pending)
            admissions.append(Admission(seq, slot.id, keep))

        items: list[BatchItem] = []
        budget = self.n_batch
        running = [s for s in self.running if s.pending]
        groups = {s.group for s in running}
        if not groups:
            return StepPlan(admissions, items)
        if self._current in groups and self._run_length < self.group_quantum:
            # a few steps in a row: a switch makes llama.cpp reserve its compute graphs again (the step
            # after one costs about 11 ms more on the x86-dev host, bench/adapter_switch_profile.py)
            group = self._current
        else:
            group = min(groups, key=lambda g: (self._served.get(g, -1), g))
        self._run_length = self._run_length + 1 if group == self._current else 1
        self._current = group
        self._steps += 1
        self._served[group] = self._steps
        n_active = len(self.running)
        running = [s for s in running if s.group == group]
        decoding = [s for s in running if not s.prefilling and s.pending]
        budget -= sum(len(s.pending) for s in decoding)
        for seq in decoding:  # decoding sequences first: one token each, and a draft where it pays
            draft = self._draft(seq, n_active, budget)
            budget -= len(draft)
            items.append(BatchItem(seq, [*seq.pending, *draft], seq.n_past, True, tuple(draft)))
        for seq in sorted((s for s in running if s.prefilling), key=lambda s: s.admitted_at):
            if budget <= 0:
                break
            chunk = seq.pending[:budget]
            if seq.save_at > seq.n_past:  # stop at the prefix's end once, so its cells alone are saved
                chunk = chunk[: seq.save_at - seq.n_past]
            last = len(chunk) == len(seq.pending)
            items.append(BatchItem(seq, chunk, seq.n_past, last))
            budget -= len(chunk)
        return StepPlan(admissions, items, group)

    def _draft(self, seq: Sequence, n_active: int, budget: int) -> list[int]:
        """Draft tokens to verify after `seq`'s pending token this step ([]: none)."""
        policy = self.speculation
        if policy is None or len(seq.pending) != 1:
            return []
        room = min(
            seq.req.params.max_tokens - seq.n_generated - 1,  # the pending token's successor is sampled anyway
            self.n_ctx_slot - seq.n_past - 1,  # the last draft's position stays inside the slot
            budget,
        )
        return policy.draft(seq.draft_state, seq.req.params, n_active, self.slots[seq.slot].tokens, seq.pending, room)

    def decoded(self, plan: StepPlan) -> None:
        """The step's batch was decoded: advance positions, record the cached tokens.

        A draft counts only once confirmed (`accepted`): until then its cells are not the slot's.
        """
        for item in plan.items:
            seq = item.seq
            slot = self.slots[seq.slot]
            tokens = item.tokens[: len(item.tokens) - len(item.draft)] if item.draft else item.tokens
            seq.n_past += len(tokens)
            slot.tokens.extend(tokens)
            seq.pending = seq.pending[len(tokens) :]
            if seq.n_prompt_left:
                seq.n_prompt_left -= len(tokens)

    def accepted(self, seq: Sequence, token: int) -> None:
        """A draft token was confirmed (the sampler picked it): its decoded cell is the slot's now."""
        seq.n_past += 1
        self.slots[seq.slot].tokens.append(token)
        seq.pending = []
