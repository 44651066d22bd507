"""The scheduler's policy, driven by a scripted decoder (no llama.cpp: it is data in, data out).

The real-model tests in tests/node/ cover the same paths end to end; these pin the policy.
"""

from __future__ import annotations

import pytest

from edgefleet.node.engine.scheduler import Scheduler, Sequence, StepPlan
from edgefleet.node.engine.types import AdapterUse, FinishReason, GenerationRequest, SamplingParams
from edgefleet.node.errors import QueueFull


def req(rid: str, n_prompt: int = 4, base: int = 100, adapter: str | None = None) -> GenerationRequest:
    use = AdapterUse(adapter, "1", 1.0, None) if adapter else None
    return GenerationRequest(rid, list(range(base, base + n_prompt)), SamplingParams(), lambda e: None, use)


def run_step(s: Scheduler, now: float = 0.0, sampled: int = 7) -> StepPlan:
    """Schedule, 'decode', and feed back one sampled token for each item that wants logits."""
    plan = s.schedule(now)
    s.decoded(plan)
    for item in plan.items:
        if item.logits:
            s.sampled(item.seq, sampled, now, end_of_generation=False, stop_matched=False)
    return plan


def end(s: Scheduler, seq: Sequence) -> None:
    """The sequence sampled an end-of-generation token."""
    assert s.sampled(seq, 2, 0.0, end_of_generation=True, stop_matched=False) is FinishReason.STOP


def test_admits_up_to_the_slots_and_queues_the_rest() -> None:
    s = Scheduler(n_slots=2, queue_limit=1, n_batch=64, n_ctx_slot=128)
    for r in "abc":
        s.add(req(r))
    plan = s.schedule(0.0)
    assert [a.seq.request_id for a in plan.admissions] == ["a", "b"]
    assert [w.request_id for w in s.waiting] == ["c"]
    with pytest.raises(QueueFull, match="queue_length"):
        s.add(req("d"))


def test_running_sequences_decode_one_token_each_and_prefill_takes_the_rest() -> None:
    s = Scheduler(n_slots=3, queue_limit=0, n_batch=8, n_ctx_slot=128)
    s.add(req("a", n_prompt=3))
    s.add(req("b", n_prompt=3))
    run_step(s)  # both prompts (6 tokens) fit one step
    s.add(req("long", n_prompt=20, base=500))
    plan = run_step(s)
    sizes = {i.seq.request_id: len(i.tokens) for i in plan.items}
    assert sizes == {"a": 1, "b": 1, "long": 6}, "two decode tokens + a prefill chunk of the remaining budget"
    long_item = next(i for i in plan.items if i.seq.request_id == "long")
    assert not long_item.logits, "no sampling until the whole prompt is in"
    plan = run_step(s)
    assert {i.seq.request_id: len(i.tokens) for i in plan.items}["long"] == 6
    assert [i.start_pos for i in plan.items if i.seq.request_id == "long"] == [6]


def test_prompt_completes_with_logits_on_its_last_token() -> None:
    s = Scheduler(n_slots=1, queue_limit=0, n_batch=4, n_ctx_slot=128)
    s.add(req("a", n_prompt=6))
    first, second = run_step(s), run_step(s)
    assert [len(i.tokens) for i in first.items] == [4] and not first.items[0].logits
    assert [len(i.tokens) for i in second.items] == [2] and second.items[0].logits
    third = run_step(s)
    assert third.items[0].tokens == [7] and third.items[0].start_pos == 6


def test_cancel_removes_a_waiting_or_running_request() -> None:
    s = Scheduler(n_slots=1, queue_limit=2, n_batch=16, n_ctx_slot=128)
    s.add(req("a"))
    s.add(req("b"))
    run_step(s)
    assert s.cancel("b") is not None and not s.waiting
    seq = s.cancel("a")
    assert seq is not None and seq.slot == 0
    assert s.n_busy == 0 and s.slots[0].tokens == [], "a cancelled slot keeps nothing cached"
    assert s.cancel("a") is None
    assert not s.has_work()


def test_slot_limit_throttles_admission_without_preempting() -> None:
    s = Scheduler(n_slots=4, queue_limit=4, n_batch=64, n_ctx_slot=128)
    for r in "abc":
        s.add(req(r, base=ord(r) * 10))
    run_step(s)
    assert s.n_busy == 3
    s.set_slot_limit(1)
    s.add(req("d"))
    run_step(s)
    assert s.n_busy == 3 and [w.request_id for w in s.waiting] == ["d"], "running ones finish, new ones wait"
    for seq in list(s.running):
        end(s, seq)
    run_step(s)
    assert s.n_busy == 1


def test_prefix_cache_reuses_the_slot_with_the_longest_common_prefix() -> None:
    s = Scheduler(n_slots=2, queue_limit=2, n_batch=64, n_ctx_slot=128)
    s.add(req("sys-a", n_prompt=10, base=0))
    s.add(req("other", n_prompt=10, base=1000))
    run_step(s)
    for seq in list(s.running):
        end(s, seq)
    s.add(GenerationRequest("sys-b", [*range(8), 42, 43], SamplingParams(), lambda e: None))
    plan = s.schedule(1.0)
    (adm,) = plan.admissions
    assert adm.keep == 8 and adm.slot == 0
    assert plan.items[0].tokens == [42, 43] and plan.items[0].start_pos == 8


def test_prefix_cache_is_keyed_by_adapter_and_always_leaves_a_token_to_decode() -> None:
    s = Scheduler(n_slots=1, queue_limit=2, n_batch=64, n_ctx_slot=128)
    s.add(req("a", n_prompt=6, base=0))
    run_step(s)
    end(s, s.running[0])
    s.add(req("same", n_prompt=6, base=0))
    (adm,) = s.schedule(0.0).admissions
    assert adm.keep == 5, "an identical prompt still decodes its last token for logits"
    end(s, s.running[0])
    s.add(req("lora", n_prompt=6, base=0, adapter="alarm"))
    (adm,) = s.schedule(0.0).admissions
    assert adm.keep == 0, "KV computed without the adapter is not reused with it"


def test_n_batch_must_cover_one_token_per_slot() -> None:
    with pytest.raises(ValueError, match="n_batch"):
        Scheduler(n_slots=8, queue_limit=0, n_batch=4, n_ctx_slot=128)


def test_steps_alternate_between_adapter_groups_and_none_starves() -> None:
    s = Scheduler(n_slots=4, queue_limit=0, n_batch=64, n_ctx_slot=512)
    for rid, adapter in (("a1", "alarm"), ("b1", None), ("a2", "alarm"), ("t1", "translate")):
        s.add(req(rid, base=hash(rid) % 1000, adapter=adapter))
    served = []
    for _ in range(9):
        plan = run_step(s)
        assert len({i.seq.group for i in plan.items}) == 1, "one adapter group per decode step"
        served.append(plan.group)
    assert served[:3] and set(served[:3]) == {"", "alarm@1*1", "translate@1*1"}
    assert served[3:6] == served[:3] and served[6:9] == served[:3], "round robin, least recently served first"
    plan = next(p for p in (run_step(s) for _ in range(3)) if p.group == "alarm@1*1")
    assert {i.seq.request_id for i in plan.items} == {"a1", "a2"}, "same adapter: decoded together"


def test_a_group_keeps_the_context_for_its_quantum_then_yields() -> None:
    s = Scheduler(n_slots=4, queue_limit=0, n_batch=64, n_ctx_slot=512, group_quantum=3)
    for rid, adapter in (("a1", "alarm"), ("b1", None), ("t1", "translate")):
        s.add(req(rid, base=hash(rid) % 1000, adapter=adapter))
    served = [run_step(s).group for _ in range(12)]
    runs = [served[i : i + 3] for i in range(0, 12, 3)]
    assert all(len(set(r)) == 1 for r in runs), f"three steps in a row per group: {served}"
    assert {r[0] for r in runs[:3]} == {"", "alarm@1*1", "translate@1*1"} and runs[3] == runs[0], served


def test_same_adapter_at_another_scale_is_another_group() -> None:
    a = AdapterUse("alarm", "1", 1.0, None)
    b = AdapterUse("alarm", "1", 0.5, None)
    c = AdapterUse("alarm", "2", 1.0, None)
    assert len({a.group, b.group, c.group}) == 3


def _one_running(max_tokens: int = 3, n_ctx_slot: int = 128) -> tuple[Scheduler, Sequence]:
    s = Scheduler(n_slots=1, queue_limit=0, n_batch=64, n_ctx_slot=n_ctx_slot)
    s.add(GenerationRequest("a", [1, 2, 3, 4], SamplingParams(max_tokens=max_tokens), lambda e: None))
    plan = s.schedule(0.0)
    s.decoded(plan)
    return s, plan.items[0].seq


def test_the_scheduler_decides_length_at_max_tokens() -> None:
    s, seq = _one_running(max_tokens=3)
    assert s.sampled(seq, 7, 1.0, end_of_generation=False, stop_matched=False) is None
    assert seq.pending == [7] and seq.first_token_at == 1.0
    s.decoded(s.schedule(1.0))
    assert s.sampled(seq, 8, 2.0, end_of_generation=False, stop_matched=False) is None
    s.decoded(s.schedule(2.0))
    assert s.sampled(seq, 9, 3.0, end_of_generation=False, stop_matched=False) is FinishReason.LENGTH
    assert seq.n_generated == 3 and seq.last_token_at == 3.0 and seq.first_token_at == 1.0
    assert s.n_busy == 0 and not s.has_work(), "the slot is free at once"
    assert s.slots[0].tokens == [1, 2, 3, 4, 7, 8], "its KV stays cached for the next prompt"


@pytest.mark.parametrize(("eog", "stop"), [(True, False), (False, True)])
def test_end_of_generation_or_a_stop_string_is_stop(eog: bool, stop: bool) -> None:
    s, seq = _one_running(max_tokens=100)
    assert s.sampled(seq, 7, 1.0, end_of_generation=eog, stop_matched=stop) is FinishReason.STOP
    assert seq.n_generated == 1 and s.n_busy == 0


def test_a_full_context_ends_with_length() -> None:
    s, seq = _one_running(max_tokens=100, n_ctx_slot=5)
    assert s.sampled(seq, 7, 1.0, end_of_generation=False, stop_matched=False) is None
    s.decoded(s.schedule(1.0))  # 5 tokens in the slot: full
    assert s.sampled(seq, 8, 2.0, end_of_generation=False, stop_matched=False) is FinishReason.LENGTH


def test_a_short_shared_preamble_does_not_evict_another_prompts_long_prefix() -> None:
    """Template B shares only the chat preamble with template A's cached prompt: it takes the emptier
    slot, so A's long prefix stays cached for A's next request."""
    s = Scheduler(n_slots=2, queue_limit=2, n_batch=128, n_ctx_slot=256)
    preamble = list(range(5))
    template_a = preamble + list(range(100, 160))
    template_b = preamble + list(range(500, 560))
    s.add(GenerationRequest("a1", template_a, SamplingParams(), lambda e: None))
    s.decoded(s.schedule(0.0))
    end(s, s.running[0])
    s.add(GenerationRequest("b1", template_b, SamplingParams(), lambda e: None))
    (adm,) = s.schedule(1.0).admissions
    assert adm.slot == 1 and adm.keep == 0, "b1 takes the empty slot, not a's"
    s.add(GenerationRequest("a2", [*template_a, 7], SamplingParams(), lambda e: None))
    (adm,) = s.schedule(2.0).admissions
    assert adm.slot == 0 and adm.keep == len(template_a), "a's prefix was kept for a2"
