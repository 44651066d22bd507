"""Draftless speculative decoding: prompt-lookup drafts and the policy deciding who drafts.

An answer that copies its context (a RAG answer, an extraction, a rule quoting its payload) keeps
repeating runs of tokens it has seen before. The drafter finds the latest earlier occurrence of the
sequence's last n tokens (n from `n_max` down to `n_min`) in prompt + answer and proposes the tokens
that followed it. The engine decodes [pending, d1..dk] in the ordinary batched step with logits at
every position and keeps the drafts the sampler would have picked anyway: greedy text is the same
with and without (scheduler.py, engine.py).

It pays where the step is small (few sequences: one decode of k+1 tokens costs little more than one
of a single token) and answers copy their context; with many sequences batching already fills the
step, so the policy drafts only while at most `max_active` sequences run, only for greedy sequences
without a grammar (a grammar sampler keeps state, it cannot be asked at several positions), sizes each
draft by the sequence's acceptance so far and what one more token costs a step on this machine
(StepCosts, learned from the engine's timed steps), and backs off a sequence where drafting does not pay.

Pure data in, data out: no llama.cpp here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from edgefleet.node.engine.types import SamplingParams


class NgramIndex:
    """Prompt + answer so far, and where each n-gram (n_min..n_max tokens) last ended before the end.

    Grows as the sequence does (tokens are only ever appended), so a step costs a few dict updates
    for its new tokens, not a scan of the whole prompt.
    """

    def __init__(self, n_max: int = 4, n_min: int = 2) -> None:
        self.n_max, self.n_min = n_max, n_min
        self.tokens: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        self._indexed = 0  # n-grams ending at or before this have been recorded

    def sync(self, cached: list[int], pending: list[int]) -> None:
        """Catch up with the history `cached + pending` (which starts with what was seen before)."""
        n, c = len(self.tokens), len(cached)
        if n < c:
            self.tokens.extend(cached[n:])
        self.tokens.extend(pending[max(n - c, 0) :])

    def draft(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the last n tokens (longest n first)."""
        toks = self.tokens
        size = len(toks)
        last = self._last_end
        for end in range(self._indexed + 1, size):  # record n-grams that end before the last token
            for n in range(self.n_min, min(self.n_max, end) + 1):
                last[tuple(toks[end - n : end])] = end
        self._indexed = max(self._indexed, size - 1)
        if k <= 0:
            return []
        for n in range(min(self.n_max, size), self.n_min - 1, -1):
            found = last.get(tuple(toks[size - n :]))
            if found is not None:
                return toks[found : min(found + k, size)]
        return []


def lookup_draft(tokens: list[int], k: int, n_max: int = 4, n_min: int = 2) -> list[int]:
    """The draft for one history, from scratch (NgramIndex does the same incrementally)."""
    index = NgramIndex(n_max, n_min)
    index.sync(tokens, [])
    return index.draft(k)


@dataclass
class DraftState:
    """One sequence's speculation record: its n-gram index, drafts, what was kept, and its back-off."""

    index: NgramIndex | None = None  # made on the first step the sequence may draft
    drafted: int = 0
    accepted: int = 0
    # Per-token acceptance, decayed counts: a draft token is a trial until the first rejected one.
    hits: float = 0.0
    trials: float = 0.0
    skip: int = 0  # steps left without drafting
    idle: int = 0  # probes in a row that found drafting not worth it (the back-off doubles)


class StepCosts:
    """What one more token in a decode step costs, in single-token steps, learned from the engine's steps.

    Decode-only steps (no prompt chunk, no adapter switch) are timed by their token count (CPU time of
    the decoding thread, so time the core spent on other processes does not count); the cost of a token
    is the slope of the median time over tokens, relative to the smallest step seen. Until two sizes
    have `min_samples` steps each, the configured prior stands. CPU decodes of a small model are nearly
    compute bound (one more token: ~0.5-0.8 of a step), a GPU's are not (~0.05). It leaves out what a
    step costs beside llama_decode (scheduling, the per-step Python work), which drafts also save: a
    cautious estimate.
    """

    def __init__(self, prior: float, min_samples: int = 4, window: int = 16, max_tokens: int = 32) -> None:
        self.prior = prior
        self.min_samples = min_samples
        self.max_tokens = max_tokens
        self.window = window
        self._times: dict[int, deque[float]] = {}  # tokens in the step -> its latest step times
        self._seen = 0  # steps observed since the estimate was last worked out
        self._cached: float | None = None
        self._medians: dict[int, float] = {}

    def observe(self, n_tokens: int, seconds: float) -> None:
        if not 1 <= n_tokens <= self.max_tokens or seconds <= 0:
            return
        times = self._times.get(n_tokens)
        if times is None:
            times = self._times[n_tokens] = deque(maxlen=self.window)
        times.append(seconds)
        self._seen += 1
        if self._seen >= 8:  # worked out again every few steps, not every step
            self._cached = None

    def marginal(self) -> float:
        """One more token, in single-token steps, on average over the sizes seen (the prior until then)."""
        if self._cached is None:
            self._seen = 0
            self._medians = {n: median(t) for n, t in self._times.items() if len(t) >= self.min_samples}
            sizes = sorted(self._medians)
            if len(sizes) < 2:
                return self.prior
            n0, t0 = sizes[0], self._medians[sizes[0]]
            slopes = [(self._medians[n] / t0 - 1.0) / (n - n0) for n in sizes[1:]]
            self._cached = min(max(sum(slopes) / len(slopes), 0.0), 4.0)
        return self._cached

    def known(self) -> bool:
        """Two step sizes have been timed enough to work out what a token costs."""
        self.marginal()
        return self._cached is not None

    def relative(self, n: int) -> float:
        """An n-token step, in steps of the smallest size timed: the measured median where there is one
        (decode cost is not linear: the second token costs most), else the nearest smaller size timed
        plus the average slope."""
        slope = self.marginal()
        medians = self._medians if self._cached is not None else {}
        if not medians:
            return 1.0 + slope * (n - 1)
        n0 = min(medians)
        below = max((m for m in medians if m <= n), default=n0)
        return medians[below] / medians[n0] + slope * (n - below)


@dataclass(frozen=True)
class SpeculationPolicy:
    """Who drafts in a step, and how many tokens (see the module doc). Plain config, plus the step costs it learns.

    Per sequence, the draft length is the k that maximizes expected tokens per step over the step's
    cost: with acceptance a per draft token (the sequence's record, a prior to start), k drafts give
    (1 - a^(k+1)) / (1 - a) tokens for a step of k+1 tokens, whose cost in single-token steps is timed
    on this machine (StepCosts; 1 + step_cost * k until then, full drafts meanwhile so long steps get
    timed). Where no k gains `min_gain`, the sequence waits a few steps (doubling) and then probes.
    """

    enabled: bool = True
    k: int = 6  # draft tokens at most per step
    max_active: int = 2  # running sequences at most for anyone to draft
    n_max: int = 4  # longest n-gram looked up
    n_min: int = 2  # shortest n-gram looked up
    step_cost: float = 0.5  # prior: one more token in a step, in single-token steps (CPU ~0.6-0.95, GPU ~0.05)
    min_gain: float = 1.05  # expected speed-up a draft must promise
    prior: float = 0.6  # per-token acceptance assumed before a sequence has drafted
    prior_weight: float = 2.0  # ... worth this many draft tokens
    decay: float = 0.8  # weight of older drafts in a sequence's acceptance, per verification
    probe: int = 2  # draft tokens of a probe after a back-off (short: it is a guess that costs)
    max_backoff: int = 32  # steps at most a sequence waits between probes
    learn_cost: bool = True  # step_cost is the prior; the engine's timed steps refine it (StepCosts)
    costs: StepCosts = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"speculation draft length k must be at least 1, got {self.k}")
        if self.max_active < 0:
            raise ValueError(f"speculation max_active must be 0 or more, got {self.max_active}")
        if not 1 <= self.n_min <= self.n_max:
            raise ValueError(f"speculation n-gram sizes need 1 <= n_min <= n_max, got {self.n_min}, {self.n_max}")
        if self.step_cost < 0:
            raise ValueError(f"speculation step_cost must be 0 or more, got {self.step_cost}")
        object.__setattr__(self, "costs", StepCosts(self.step_cost))

    def timed(self, n_tokens: int, seconds: float) -> None:
        """A decode-only step of `n_tokens` took `seconds` (the engine's measure of the machine)."""
        if self.learn_cost:
            self.costs.observe(n_tokens, seconds)

    def eligible(self, params: SamplingParams) -> bool:
        """Greedy and without a grammar: the sampler is stateless and picks one token per position."""
        return self.enabled and params.temperature <= 0.0 and not params.grammar

    def acceptance(self, state: DraftState) -> float:
        """The sequence's per-token acceptance estimate (the prior before its first draft)."""
        w = self.prior_weight
        return (state.hits + self.prior * w) / (state.trials + w)

    def best_k(self, a: float) -> tuple[int, float]:
        """The draft length with the highest expected speed-up at acceptance `a`, and that speed-up."""
        best, gain, tokens, p = 0, 1.0, 1.0, 1.0
        costs = self.costs
        for k in range(1, self.k + 1):
            p *= a
            tokens += p
            g = tokens / costs.relative(1 + k)
            if g > gain:
                best, gain = k, g
        return best, gain

    def draft(
        self, state: DraftState, params: SamplingParams, n_active: int, cached: list[int], pending: list[int], room: int
    ) -> list[int]:
        """The draft for one decoding sequence this step, or [] (no draft: a plain one-token step).

        `cached + pending`: prompt + answer so far, `pending` decoded this step; `room`: how many
        draft tokens may be decoded at most (tokens left under max_tokens and the context, batch space).
        """
        if not self.eligible(params) or n_active > self.max_active:
            return []
        if state.index is None:
            state.index = NgramIndex(self.n_max, self.n_min)
        state.index.sync(cached, pending)
        if state.skip > 0:
            state.skip -= 1
            return []
        if self.learn_cost and not self.costs.known():  # full drafts until the costs of steps are known
            return state.index.draft(min(self.k, room))
        k, gain = self.best_k(self.acceptance(state))
        if gain < self.min_gain:
            if state.idle > 0:  # waited: probe, so the estimate can recover
                k = self.probe
            else:
                state.idle += 1
                state.skip = 1
                return []
        return state.index.draft(min(k, room))

    def verified(self, state: DraftState, drafted: int, accepted: int) -> None:
        """The step kept `accepted` of `drafted` tokens: update the sequence's acceptance and back-off."""
        state.drafted += drafted
        state.accepted += accepted
        state.hits = state.hits * self.decay + accepted
        state.trials = state.trials * self.decay + accepted + (1 if accepted < drafted else 0)
        if self.best_k(self.acceptance(state))[1] >= self.min_gain:
            state.idle = 0
            return
        state.idle += 1
        state.skip = min(1 << state.idle, self.max_backoff)
