"""Draftless speculation as data: the prompt-lookup drafter, the policy and the scheduler's bookkeeping.

No llama.cpp; test_speculation.py runs the real model end to end.
"""

from __future__ import annotations

import itertools
import random

import pytest

from edgefleet.node.engine.scheduler import Scheduler
from edgefleet.node.engine.speculation import DraftState, NgramIndex, SpeculationPolicy, lookup_draft
from edgefleet.node.engine.types import GenerationRequest, SamplingParams

GREEDY = SamplingParams(max_tokens=64, temperature=0.0)


def brute_force(tokens: list[int], k: int, n_max: int, n_min: int) -> list[int]:
    """The definition: latest earlier occurrence of the last n tokens, longest n first."""
    size = len(tokens)
    for n in range(min(n_max, size), n_min - 1, -1):
        key = tokens[size - n :]
        for end in range(size - 1, n - 1, -1):
            if tokens[end - n : end] == key:
                return tokens[end : min(end + k, size)]
    return []


def test_the_draft_is_what_followed_the_latest_earlier_occurrence() -> None:
    #            0  1  2  3  4  5  6  7  8  9
    history = [5, 1, 2, 3, 9, 1, 2, 3, 7, 1, 2]
    assert lookup_draft(history, 4) == [3, 7, 1, 2], "the latest match (…1 2 → 3 7) wins"
    assert lookup_draft(history, 1) == [3]
    assert lookup_draft([4, 5, 6, 7], 3) == [], "nothing repeats: no draft"
    assert lookup_draft([1, 2, 8, 8, 1, 2], 3) == [8, 8, 1]
    assert lookup_draft([1, 2, 8, 8, 1, 2], 3, n_min=3) == [], "a bigram match is too short then"
    assert lookup_draft(history, 0) == []


def test_the_index_grows_with_the_sequence_and_agrees_with_the_definition() -> None:
    rng = random.Random(7)
    for _ in range(30):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 80))]
        index = NgramIndex(4, 2)
        cut = rng.randrange(len(tokens) + 1)
        for end in range(1, len(tokens) + 1):  # one token at a time: cached part, then the pending one
            index.sync(tokens[: min(cut, end - 1)], tokens[min(cut, end - 1) : end])
            if rng.random() < 0.5 or end == len(tokens):
                assert index.draft(5) == brute_force(tokens[:end], 5, 4, 2), tokens[:end]
        assert index.tokens == tokens


def test_only_greedy_sequences_without_a_grammar_and_few_running_draft() -> None:
    policy = SpeculationPolicy(k=4, max_active=2, prior=0.95)
    history = [1, 2, 3, 4, 5, 1, 2]
    assert policy.draft(DraftState(), GREEDY, 1, history[:-1], history[-1:], 10) == [3, 4, 5, 1]
    assert policy.draft(DraftState(), GREEDY, 2, history[:-1], history[-1:], 2) == [3, 4], "room bounds it"
    assert policy.draft(DraftState(), GREEDY, 3, history[:-1], history[-1:], 10) == [], "too many running"
    sampled = SamplingParams(temperature=0.7)
    assert policy.draft(DraftState(), sampled, 1, history[:-1], history[-1:], 10) == []
    grammar = SamplingParams(temperature=0.0, grammar='root ::= "a"')
    assert policy.draft(DraftState(), grammar, 1, history[:-1], history[-1:], 10) == []
    off = SpeculationPolicy(enabled=False)
    assert off.draft(DraftState(), GREEDY, 1, history[:-1], history[-1:], 10) == []


def test_draft_length_follows_acceptance_and_cost() -> None:
    policy = SpeculationPolicy(k=8, step_cost=0.5)
    assert policy.best_k(0.3)[0] == 0, "low acceptance: drafting does not pay"
    k_mid, g_mid = policy.best_k(0.85)
    k_high, g_high = policy.best_k(0.97)
    assert 1 <= k_mid < k_high and 1.0 < g_mid < g_high
    assert SpeculationPolicy(k=8, step_cost=0.0).best_k(0.5)[0] == 8, "free tokens: the longest draft"
    assert SpeculationPolicy(k=8, step_cost=1.0).best_k(0.99)[0] == 0, "a token costs a step: never"


def test_a_sequence_whose_drafts_are_rejected_backs_off_and_probes_again() -> None:
    policy = SpeculationPolicy(k=6, max_active=2, max_backoff=8, learn_cost=False)
    state = DraftState()
    history = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    steps_with_draft = []
    for step in range(60):
        draft = policy.draft(state, GREEDY, 1, history[:-1], history[-1:], 10)
        if draft:
            steps_with_draft.append(step)
            policy.verified(state, len(draft), 0)  # every draft rejected
    assert state.accepted == 0 and state.drafted <= policy.k + len(steps_with_draft) * policy.probe
    gaps = [b - a for a, b in itertools.pairwise(steps_with_draft)]
    assert 2 <= len(steps_with_draft) <= 12, steps_with_draft
    assert gaps == sorted(gaps) and max(gaps) <= policy.max_backoff + 1, gaps
    for _ in range(5):  # accepted drafts bring it back to full-length drafts
        policy.verified(state, 6, 6)
    state.skip = 0
    assert len(policy.draft(state, GREEDY, 1, history[:-1], history[-1:], 10)) >= 3


def test_the_policy_refuses_nonsense() -> None:
    for bad in ({"k": 0}, {"max_active": -1}, {"n_min": 0}, {"n_min": 5, "n_max": 4}, {"step_cost": -1.0}):
        with pytest.raises(ValueError):
            SpeculationPolicy(**bad)  # type: ignore[arg-type]


def test_the_scheduler_counts_a_draft_only_once_confirmed() -> None:
    s = Scheduler(n_slots=2, queue_limit=2, n_batch=64, n_ctx_slot=32, speculation=SpeculationPolicy(k=4, prior=0.95))
    prompt = [10, 11, 12, 13, 14, 10, 11]
    seq = s.add(GenerationRequest("a", prompt, SamplingParams(max_tokens=6, temperature=0.0), lambda e: None))
    plan = s.schedule(0.0)
    s.decoded(plan)
    assert s.sampled(seq, 12, 0.0, end_of_generation=False, stop_matched=False) is None
    plan = s.schedule(0.0)
    (item,) = plan.items
    assert item.tokens == [12, 13, 14, 10, 11][: 1 + len(item.draft)] and item.draft, "[pending, *draft]"
    assert len(item.draft) <= 4, "max_tokens 6, one generated: at most 4 drafts beyond the next token"
    s.decoded(plan)
    assert seq.n_past == len(prompt) + 1 and s.slots[seq.slot].tokens == [*prompt, 12], "drafts not counted yet"
    s.sampled(seq, 13, 0.0, end_of_generation=False, stop_matched=False)
    s.accepted(seq, 13)
    assert seq.n_past == len(prompt) + 2 and s.slots[seq.slot].tokens == [*prompt, 12, 13] and not seq.pending
    s.sampled(seq, 99, 0.0, end_of_generation=False, stop_matched=False)  # the next draft token is rejected
    assert seq.pending == [99] and seq.n_generated == 3


def test_drafts_stay_inside_the_context_and_max_tokens() -> None:
    s = Scheduler(n_slots=1, queue_limit=1, n_batch=64, n_ctx_slot=12, speculation=SpeculationPolicy(k=8, prior=0.99))
    prompt = [1, 2, 3, 4, 5, 6, 7, 1, 2]
    seq = s.add(GenerationRequest("a", prompt, SamplingParams(max_tokens=50, temperature=0.0), lambda e: None))
    s.decoded(s.schedule(0.0))
    s.sampled(seq, 3, 0.0, end_of_generation=False, stop_matched=False)
    (item,) = s.schedule(0.0).items
    assert item.start_pos + len(item.tokens) <= 12 and len(item.draft) == 12 - len(prompt) - 1


def test_the_step_cost_is_learned_from_timed_steps() -> None:
    policy = SpeculationPolicy(k=6, step_cost=0.5)
    assert policy.costs.marginal() == 0.5, "the prior before any step"
    for _ in range(5):
        policy.timed(1, 0.010)
    assert policy.costs.marginal() == 0.5, "one step size says nothing about the next token"
    for _ in range(5):
        policy.timed(5, 0.034)  # 4 more tokens: 2.4 steps more
    assert policy.costs.marginal() == pytest.approx(0.6)
    assert policy.costs.relative(5) == pytest.approx(3.4) and policy.costs.relative(7) == pytest.approx(4.6)
    assert policy.costs.relative(3) == pytest.approx(2.2), "between sizes: the smaller one plus the slope"
    assert policy.best_k(0.9)[0] < SpeculationPolicy(k=6, step_cost=0.1).best_k(0.9)[0]
    fixed = SpeculationPolicy(step_cost=0.3, learn_cost=False)
    for n in (1, 1, 1, 1, 3, 3, 3, 3):
        fixed.timed(n, 0.01 * n)
    assert fixed.costs.marginal() == 0.3
