"""Which slot a request takes: adapter groups stay in runs of consecutive slots.

llama.cpp decodes a batch over per-sequence KV streams in micro-batches of consecutive sequence ids
(slots), so a group spread over slots 0 and 2 costs two micro-batches a step where slots 0 and 1
cost one (bench/adapter_switch_profile.py measures it). The policy is pinned here with a scripted
decoder; tests/node/test_adapters.py runs mixed adapters on the real model.
"""

from __future__ import annotations

from edgefleet.node.engine.scheduler import Scheduler, consecutive_runs
from edgefleet.node.engine.types import AdapterUse, GenerationRequest, SamplingParams


def req(rid: str, prompt: list[int], adapter: str | None = None) -> GenerationRequest:
    use = AdapterUse(adapter, "1", 1.0, None) if adapter else None
    return GenerationRequest(rid, prompt, SamplingParams(), lambda e: None, use)


def slots_of(s: Scheduler) -> dict[str, list[int]]:
    """Adapter group -> the slots its running sequences hold."""
    groups: dict[str, list[int]] = {}
    for slot in s.slots:
        if slot.seq is not None:
            groups.setdefault(slot.seq.group, []).append(slot.id)
    return groups


def finish_all(s: Scheduler) -> None:
    for seq in list(s.running):
        s.sampled(seq, 2, 0.0, end_of_generation=True, stop_matched=False)


def test_consecutive_runs_counts_micro_batches() -> None:
    assert consecutive_runs([0, 1, 2, 3]) == 1
    assert consecutive_runs([2, 0]) == 2
    assert consecutive_runs([3, 0, 1]) == 2
    assert consecutive_runs([]) == 0


def test_two_groups_arriving_interleaved_take_consecutive_slots() -> None:
    s = Scheduler(n_slots=4, queue_limit=4, n_batch=64, n_ctx_slot=256)
    for i, adapter in enumerate(("alarm", "translate", "alarm", "translate")):
        s.add(req(f"r{i}", list(range(100 * i, 100 * i + 20)), adapter))
    plan = s.schedule(0.0)
    assert len(plan.admissions) == 4
    groups = slots_of(s)
    assert sorted(groups) == ["alarm@1*1", "translate@1*1"]
    assert all(consecutive_runs(ids) == 1 for ids in groups.values()), groups
    assert [item.seq.slot for item in plan.items if not item.seq.prefilling] == sorted(
        item.seq.slot for item in plan.items if not item.seq.prefilling
    ), "a step's rows in increasing slot order"


def test_cached_prompts_do_not_spread_a_group_over_other_groups_slots() -> None:
    """One group ran everywhere, so every slot holds one of its prompts (a long reusable prefix);
    when a second group joins, the first still packs together rather than following its caches."""
    s = Scheduler(n_slots=4, queue_limit=4, n_batch=512, n_ctx_slot=256)
    prompts = [list(range(100 * i, 100 * i + 40)) for i in range(4)]
    for i, prompt in enumerate(prompts):
        s.add(req(f"warm{i}", prompt, "alarm"))
    s.decoded(s.schedule(0.0))
    finish_all(s)
    # alarm's next prompts are cached in slots 0 and 2; translate's in none
    s.add(req("a0", [*prompts[0], 1], "alarm"))
    s.add(req("t0", list(range(900, 940)), "translate"))
    s.add(req("a2", [*prompts[2], 1], "alarm"))
    s.add(req("t1", list(range(950, 990)), "translate"))
    s.schedule(1.0)
    groups = slots_of(s)
    assert all(consecutive_runs(ids) == 1 for ids in groups.values()), groups


def test_one_group_fills_the_slot_next_to_its_running_sequence() -> None:
    """Slot 0 runs, slot 1 holds a finished request's unrelated prompt, slot 2 is empty: the emptier slot
    would leave a gap, so the new request takes slot 1 and the step stays one micro-batch."""
    s = Scheduler(n_slots=3, queue_limit=3, n_batch=128, n_ctx_slot=256)
    s.add(req("p", list(range(0, 30))))
    s.add(req("q", list(range(200, 230))))
    s.decoded(s.schedule(0.0))
    assert slots_of(s) == {"": [0, 1]}
    (q,) = [seq for seq in s.running if seq.request_id == "q"]
    s.sampled(q, 2, 0.0, end_of_generation=True, stop_matched=False)  # slot 1 keeps q's cells
    s.add(req("new", list(range(700, 730))))
    (adm,) = s.schedule(1.0).admissions
    assert adm.slot == 1 and adm.keep == 0


def test_a_long_shared_prefix_still_decides_within_one_group() -> None:
    s = Scheduler(n_slots=3, queue_limit=3, n_batch=128, n_ctx_slot=256)
    system = list(range(40))
    s.add(req("a", [*system, 1, 2]))
    s.add(req("b", list(range(300, 340))))
    s.decoded(s.schedule(0.0))
    finish_all(s)
    s.add(req("c", [*system, 3, 4]))
    (adm,) = s.schedule(1.0).admissions
    assert adm.slot == 0 and adm.keep == len(system)
