"""The rollout's pure parts: waves, gates, and the state machine (incl. operator verbs and restarts)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.orchestrator.rollouts.gates import Health, health_verdict, quality_verdict, service_verdict
from edgefleet.orchestrator.rollouts.machine import (
    Applied,
    ApplyWave,
    BaselineDone,
    Complete,
    Completed,
    EvaluationDone,
    Operator,
    Restarted,
    Rollback,
    RolledBack,
    RolloutRefused,
    RunBaseline,
    RunEvaluation,
    Tick,
    advance,
    due_actions,
    new_status,
)
from edgefleet.orchestrator.rollouts.waves import WaveError, plan_waves
from edgefleet.proto.evaluation_sets import EvaluationSet, Figures
from edgefleet.proto.rollouts import GatePlan, ReleaseChange, RolloutPlan, RolloutStatus, WavePlan

NODES = ["n1", "n2", "n3", "n4"]
TEMPLATE = {"name": "fault", "version": "2", "template": "Say {{ x }}", "variables": ["x"]}
EVAL = EvaluationSet.model_validate({"cases": [{"id": "c1", "prompt": "hi", "contains": ["hello"]}]})


def fig(score: float = 1.0, p95: float = 100.0, tps: float = 50.0, schema: int = 0) -> Figures:
    return Figures(score=score, p95_ms=p95, tokens_per_s=tps, schema_failures=schema, cases=1)


def plan(evaluation: EvaluationSet | None = EVAL, **waves: object) -> RolloutPlan:
    return RolloutPlan(
        name="r1",
        target={"kind": "group", "name": "line"},
        change=ReleaseChange(section="templates", entries={"fault": TEMPLATE}),
        waves=WavePlan(**{"canary_count": 1, "steps": [50, 100], "soak_s": 10, **waves}),
        evaluation=evaluation,
        operator="ops",
    )


def every(nodes: list[str]) -> Tick:
    return Tick(moved=frozenset(nodes), serving=frozenset(nodes))


# -- waves -------------------------------------------------------------------------------------------------------
def test_waves_canary_then_cumulative_percentages() -> None:
    assert plan_waves(NODES, WavePlan(canary_count=1, steps=[50, 100])) == [["n1"], ["n2"], ["n3", "n4"]]
    assert plan_waves(NODES, WavePlan(canary=["n3"], steps=[100])) == [["n3"], ["n1", "n2", "n4"]]
    assert plan_waves(NODES, WavePlan(steps=[100])) == [NODES]  # at once, as a push
    assert plan_waves(["b", "a", "c"], WavePlan(steps=[10, 20, 100])) == [["a"], ["b"], ["c"]]


def test_waves_refuse_unknown_canaries_and_bad_steps() -> None:
    with pytest.raises(WaveError, match="not in the target"):
        plan_waves(NODES, WavePlan(canary=["zz"]))
    with pytest.raises(WaveError, match="no nodes"):
        plan_waves([], WavePlan())
    with pytest.raises(ValidationError, match="ending at 100"):
        WavePlan(steps=[50])
    with pytest.raises(ValidationError, match="must grow"):
        WavePlan(steps=[50, 50, 100])


def test_release_change_validates_entries_against_the_section() -> None:
    with pytest.raises(ValidationError, match="template"):
        ReleaseChange(section="templates", entries={"fault": {"name": "fault", "version": "1"}})
    with pytest.raises(ValidationError, match="named"):
        ReleaseChange(section="templates", entries={"other": TEMPLATE})
    with pytest.raises(ValidationError, match="changes something"):
        ReleaseChange(section="rules")
    c = ReleaseChange(section="templates", entries={"fault": TEMPLATE})
    assert ReleaseChange.model_validate_json(c.model_dump_json()) == c


# -- gates -------------------------------------------------------------------------------------------------------
def test_quality_gate_names_the_figures_when_the_score_falls() -> None:
    v = quality_verdict({"n1": fig(1.0)}, {"n1": fig(0.0)}, GatePlan())
    assert not v.passed and v.gate == "quality"
    assert v.figures["score_before"] == 1.0 and v.figures["score_after"] == 0.0 and v.figures["drop"] == 1.0
    assert "fell from 1.00 to 0.00" in v.message
    assert quality_verdict({"n1": fig(1.0)}, {"n1": fig(0.5)}, GatePlan(max_quality_drop=0.5)).passed
    assert not quality_verdict({"n1": fig(0.5)}, {"n1": fig(0.5)}, GatePlan(min_quality=0.8)).passed


def test_service_gate_compares_latency_and_throughput_on_the_same_nodes() -> None:
    gates = GatePlan(max_p95_ratio=2.0, min_tokens_per_s_ratio=0.5)
    assert service_verdict({"n1": fig()}, {"n1": fig(p95=150, tps=40)}, gates).passed
    slow = service_verdict({"n1": fig()}, {"n1": fig(p95=300)}, gates)
    assert not slow.passed and slow.figures["p95_ratio"] == 3.0 and "p95 latency x3.00 on n1" in slow.message
    assert not service_verdict({"n1": fig()}, {"n1": fig(tps=10)}, gates).passed
    assert not service_verdict({"n1": fig()}, {"n1": fig(schema=1)}, gates).passed


def test_health_gate() -> None:
    ok = Health(nodes=2, offline=[], not_moved=[], error_reports=0, refused=[])
    assert health_verdict(ok, GatePlan()).passed
    bad = Health(nodes=2, offline=["n2"], not_moved=[], error_reports=2, refused=[])
    v = health_verdict(bad, GatePlan(max_error_reports=1))
    assert not v.passed and "not serving: n2" in v.message and "2 new error reports" in v.message


# -- the machine ---------------------------------------------------------------------------------------------------
def run_wave(s: RolloutStatus, t: float, after: Figures | None = None) -> tuple[RolloutStatus, float]:
    """Drive the current wave from pending through its evaluation; returns the status and the time."""
    nodes = s.waves[s.current].nodes
    s, acts = advance(s, Tick(), t)
    assert acts == [RunBaseline(nodes)]
    s, acts = advance(s, BaselineDone({n: fig() for n in nodes}), t + 1)
    assert acts == [ApplyWave(nodes)]
    s, acts = advance(s, Applied({n: 7 for n in nodes}, list(nodes)), t + 2)
    assert acts == [] and s.waves[s.current].state == "applying"
    s, acts = advance(s, every(nodes), t + 3)
    assert s.waves[s.current].state == "soaking" and acts == []
    s, acts = advance(s, every(nodes), t + 4)  # soaking, not yet soaked
    assert acts == []
    s, acts = advance(s, every(nodes), t + 14)
    assert acts == [RunEvaluation(nodes)]
    s, acts = advance(s, EvaluationDone({n: after or fig() for n in nodes}), t + 15)
    return s, t + 20


def test_a_good_release_passes_wave_by_wave_then_completes() -> None:
    s = new_status(plan(), plan_waves(NODES, plan().waves), 0.0)
    t = 1.0
    for i in range(3):
        s, t = run_wave(s, t)
        assert s.waves[i].state == "passed"
        assert [v.gate for v in s.waves[i].verdicts] == ["health", "service", "quality"]
    assert s.current == 3 and due_actions(s) == [Complete()]
    s, acts = advance(s, Completed(), t)
    assert s.state == "succeeded" and s.terminal and acts == []


def test_a_failing_quality_gate_rolls_back_the_canary_and_stops() -> None:
    s = new_status(plan(), plan_waves(NODES, plan().waves), 0.0)
    s, _ = run_wave(s, 1.0, after=fig(score=0.0))
    assert s.state == "failed" and s.waves[0].state == "failed" and s.current == 0
    assert "quality gate failed" in s.reason and "fell from 1.00 to 0.00" in s.reason
    assert due_actions(s) == [Rollback(["n1"])]
    s, acts = advance(s, RolledBack(["n1"]), 30.0)
    assert acts == [] and s.waves[0].state == "rolled_back" and s.terminal
    assert all(w.state == "pending" for w in s.waves[1:]), "the other nodes never see it"


def test_a_gate_failing_in_a_later_wave_rolls_back_the_earlier_waves_too() -> None:
    """A failed release leaves no node on it: the canary passed, wave 2 failed, both go back (as
    Argo Rollouts returns every pod to the stable version), never a fleet half on a failed release."""
    s = new_status(plan(), plan_waves(NODES, plan().waves), 0.0)
    s, t = run_wave(s, 1.0)
    assert s.waves[0].state == "passed" and s.current == 1
    s, _ = run_wave(s, t + 1, after=fig(score=0.0))
    assert s.state == "failed" and s.waves[1].state == "failed"
    assert due_actions(s) == [Rollback(["n1", "n2"])]
    assert "rolling back n1, n2" in s.events[-1].message
    s, acts = advance(s, RolledBack(["n1", "n2"]), 60.0)
    assert acts == [] and s.terminal
    assert [w.state for w in s.waves] == ["rolled_back", "rolled_back", "pending"]


def test_nodes_that_do_not_move_fail_the_health_gate_after_the_apply_timeout() -> None:
    s = new_status(plan(None, apply_timeout_s=5), [["n1"], ["n2"]], 0.0)
    s, acts = advance(s, Tick(), 1.0)
    assert acts == [ApplyWave(["n1"])]  # no evaluation set: no baseline
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 2.0)
    s, acts = advance(s, Tick(serving=frozenset({"n1"})), 4.0)
    assert acts == [] and s.state == "running"
    s, acts = advance(s, Tick(serving=frozenset({"n1"})), 8.0)
    assert s.state == "failed" and acts == [Rollback(["n1"])] and "not on the new generation: n1" in s.reason


def test_a_node_going_offline_while_soaking_fails_the_wave() -> None:
    s = new_status(plan(None), [["n1"], ["n2"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 2.0)
    s, _ = advance(s, every(["n1"]), 3.0)
    s, acts = advance(s, Tick(moved=frozenset({"n1"})), 4.0)
    assert s.state == "failed" and "not serving: n1" in s.reason and acts == [Rollback(["n1"])]


def test_pause_stops_progress_resume_continues_promote_skips_only_the_soak() -> None:
    s = new_status(plan(None), [["n1"], ["n2"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 2.0)
    s, _ = advance(s, Operator("pause", "ops"), 2.5)
    s, acts = advance(s, every(["n1"]), 3.0)
    assert s.state == "paused" and s.waves[0].state == "applying" and acts == []
    with pytest.raises(RolloutRefused, match="paused already"):
        advance(s, Operator("pause"), 3.0)
    s, _ = advance(s, Operator("resume", "ops"), 4.0)
    s, _ = advance(s, every(["n1"]), 4.0)
    assert s.waves[0].state == "soaking"
    s, _ = advance(s, Operator("promote", "ops"), 5.0)
    s, acts = advance(s, every(["n1"]), 5.0)
    assert s.waves[0].state == "passed" and s.waves[0].verdicts[0].gate == "health"
    assert acts == [ApplyWave(["n2"])]


def test_promote_never_skips_an_evaluation() -> None:
    s = new_status(plan(), [["n1"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, BaselineDone({"n1": fig()}), 1.0)
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 2.0)
    s, _ = advance(s, every(["n1"]), 3.0)
    s, acts = advance(s, Operator("promote"), 3.5)
    s, acts = advance(s, every(["n1"]), 4.0)
    assert acts == [RunEvaluation(["n1"])]
    with pytest.raises(RolloutRefused, match="never skipped"):
        advance(s, Operator("promote"), 4.0)


def test_abort_rolls_back_every_moved_node() -> None:
    s = new_status(plan(None), [["n1"], ["n2", "n3"], ["n4"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 1.0)
    s, _ = advance(s, Operator("promote"), 1.0)
    s, _ = advance(s, every(["n1"]), 1.0)
    s, _ = advance(s, every(["n1"]), 1.0)
    assert s.waves[0].state == "passed" and s.waves[1].state == "applying"
    s, _ = advance(s, Applied({"n2": 3, "n3": 4}, ["n2", "n3"]), 2.0)
    s, acts = advance(s, Operator("abort", "ops"), 3.0)
    assert s.state == "aborted" and acts == [Rollback(["n1", "n2", "n3"])]
    s, acts = advance(s, RolledBack(["n1", "n2", "n3"]), 4.0)
    assert acts == [] and s.terminal and [w.state for w in s.waves] == ["rolled_back", "rolled_back", "pending"]
    with pytest.raises(RolloutRefused, match="aborted"):
        advance(s, Operator("resume"), 5.0)


def test_restart_reapplies_an_unpublished_wave_and_reevaluates_but_never_repeats_a_passed_wave() -> None:
    s = new_status(plan(), [["n1"], ["n2"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, BaselineDone({"n1": fig()}), 1.0)
    stored = RolloutStatus.model_validate_json(s.model_dump_json())  # written before the apply ran
    again, acts = advance(stored, Restarted(), 5.0)
    assert acts == [ApplyWave(["n1"])], "applying without generations: apply (the driver skips nodes that hold it)"
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 2.0)
    s, _ = advance(s, every(["n1"]), 3.0)
    s, acts = advance(s, every(["n1"]), 20.0)
    assert acts == [RunEvaluation(["n1"])]
    stored = RolloutStatus.model_validate_json(s.model_dump_json())  # killed while evaluating
    again, acts = advance(stored, Restarted(), 30.0)
    assert acts == [RunEvaluation(["n1"])] and "runs again" in again.events[-1].message
    again, acts = advance(again, EvaluationDone({"n1": fig()}), 31.0)
    assert again.waves[0].state == "passed" and acts == [RunBaseline(["n2"])]
    stored = RolloutStatus.model_validate_json(again.model_dump_json())
    _, acts = advance(stored, Restarted(), 40.0)
    assert acts == [RunBaseline(["n2"])], "the passed canary is not applied again"


def test_a_failed_rollback_is_due_again_after_a_restart() -> None:
    s = new_status(plan(None), [["n1"]], 0.0)
    s, _ = advance(s, Tick(), 1.0)
    s, _ = advance(s, Applied({"n1": 3}, ["n1"]), 1.0)
    s, _ = advance(s, Operator("abort"), 2.0)
    stored = RolloutStatus.model_validate_json(s.model_dump_json())
    _, acts = advance(stored, Restarted(), 3.0)
    assert acts == [Rollback(["n1"])]


# -- what the driver publishes (its pure helpers) -------------------------------------------------------------------
def test_node_overrides_record_and_restore_the_previous_entries() -> None:
    from edgefleet.orchestrator.rollouts.driver import release_values, section_of, with_entries
    from edgefleet.proto.payloads import DesiredState

    change = ReleaseChange(section="templates", entries={"fault": TEMPLATE}, remove=["old"])
    own = {"name": "old", "version": "1", "template": "x"}
    doc = DesiredState(site="lab", target={"kind": "node", "name": "n1"}, generation=4, templates={"old": own})
    before = section_of(doc, change)
    assert before == {"fault": None, "old": {**own, "system": "", "variables": [], "description": ""}}
    moved = with_entries(doc, change, release_values(change))
    assert set(moved["templates"]) == {"fault"}
    after = DesiredState(site="lab", target=doc.target, generation=5, **moved)
    assert section_of(after, change) == release_values(change)
    restored = DesiredState(site="lab", target=doc.target, generation=6, **with_entries(after, change, before))
    assert section_of(restored, change) == before


def test_a_model_release_overrides_and_restores_the_base_model() -> None:
    from edgefleet.orchestrator.rollouts.driver import release_values, section_of, with_entries

    ref = {"name": "gemma", "version": "1", "sha256": "a" * 64, "size": 10}
    change = ReleaseChange(section="model", entries={"model": ref})
    assert section_of(None, change) == {"model": None}
    assert with_entries(None, change, release_values(change)) == {"model": ref}
    assert with_entries(None, change, {"model": None}) == {"model": None}
    with pytest.raises(ValidationError, match="named 'model'"):
        ReleaseChange(section="model", entries={"gemma": ref})
