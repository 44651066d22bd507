"""The quality gate's figures name a real node's scores, also when every node's score rose (a model
release whose new model answers what the old one missed: found end to end, tests/orchestrator/
test_model_deploy_site.py, where the verdict read "quality: score -1.00 (before -1.00)")."""

from __future__ import annotations

from edgefleet.orchestrator.rollouts.gates import quality_verdict
from edgefleet.proto.evaluation_sets import Figures
from edgefleet.proto.rollouts import GatePlan


def test_a_score_that_rose_from_nothing_to_full_is_reported_as_it_is() -> None:
    v = quality_verdict({"n1": Figures(score=0.0, cases=1)}, {"n1": Figures(score=1.0, cases=1)}, GatePlan())
    assert v.passed
    assert (v.figures["score_before"], v.figures["score_after"], v.figures["drop"]) == (0.0, 1.0, 0.0)
    assert v.message == "quality: score 1.00 (before 0.00)"


def test_the_node_that_rose_least_is_the_one_reported() -> None:
    before = {"n1": Figures(score=0.0, cases=2), "n2": Figures(score=0.5, cases=2)}
    after = {"n1": Figures(score=1.0, cases=2), "n2": Figures(score=1.0, cases=2)}
    v = quality_verdict(before, after, GatePlan())
    assert v.passed and (v.figures["score_before"], v.figures["score_after"]) == (0.5, 1.0)
