"""The gates of a wave (pure): health from what the nodes report, service and quality from the
evaluation set's figures on the same nodes before and after the change. Each verdict names its
gate and, when it fails, the figures that failed it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.proto.evaluation_sets import Figures
from edgefleet.proto.rollouts import GatePlan, GateVerdict


@dataclass(frozen=True)
class Health:
    """What the wave's nodes showed during the wave."""

    nodes: int
    offline: list[str]  # not serving (offline, failed, or unknown)
    not_moved: list[str]  # not reporting the generation published for them
    error_reports: int  # new error reports from them since the wave was applied
    refused: list[str]  # nodes reporting an error about what they were sent (reported state `errors`)


def health_verdict(h: Health, plan: GatePlan) -> GateVerdict:
    figures = {
        "nodes": float(h.nodes),
        "offline": float(len(h.offline)),
        "not_moved": float(len(h.not_moved)),
        "error_reports": float(h.error_reports),
        "max_error_reports": float(plan.max_error_reports),
    }
    problems = []
    if h.offline:
        problems.append(f"not serving: {', '.join(h.offline)}")
    if h.not_moved:
        problems.append(f"not on the new generation: {', '.join(h.not_moved)}")
    if h.refused:
        problems.append(f"refused the change: {', '.join(h.refused)}")
    if h.error_reports > plan.max_error_reports:
        problems.append(f"{h.error_reports} new error reports (at most {plan.max_error_reports})")
    if not plan.health:
        return GateVerdict(gate="health", passed=True, figures=figures, message="health gate off")
    if problems:
        return GateVerdict(
            gate="health", passed=False, figures=figures, message="health gate failed: " + "; ".join(problems)
        )
    return GateVerdict(
        gate="health", passed=True, figures=figures, message=f"health: {h.nodes} nodes serving the new generation"
    )


def _ratio(after: float, before: float) -> float | None:
    return after / before if before > 0 else None


def service_verdict(before: Mapping[str, Figures], after: Mapping[str, Figures], plan: GatePlan) -> GateVerdict:
    """p95 latency and tokens/s against the same node before; answers failing their schema not more than before."""
    worst_p95, worst_tps, schema_more = 0.0, float("inf"), 0
    worst_p95_node = worst_tps_node = ""
    for node, a in after.items():
        b = before.get(node)
        if b is None:
            continue
        p95 = _ratio(a.p95_ms, b.p95_ms)
        if p95 is not None and p95 > worst_p95:
            worst_p95, worst_p95_node = p95, node
        tps = _ratio(a.tokens_per_s, b.tokens_per_s)
        if tps is not None and tps < worst_tps:
            worst_tps, worst_tps_node = tps, node
        schema_more += max(0, a.schema_failures - b.schema_failures)
    figures = {
        "p95_ratio": round(worst_p95, 3),
        "max_p95_ratio": plan.max_p95_ratio,
        "schema_failures_added": float(schema_more),
        "min_tokens_per_s_ratio": plan.min_tokens_per_s_ratio,
    }
    if worst_tps != float("inf"):
        figures["tokens_per_s_ratio"] = round(worst_tps, 3)
    problems = []
    if worst_p95 > plan.max_p95_ratio:
        problems.append(f"p95 latency x{worst_p95:.2f} on {worst_p95_node} (at most x{plan.max_p95_ratio})")
    if worst_tps != float("inf") and worst_tps < plan.min_tokens_per_s_ratio:
        problems.append(f"tokens/s x{worst_tps:.2f} on {worst_tps_node} (at least x{plan.min_tokens_per_s_ratio})")
    if schema_more:
        problems.append(f"{schema_more} more answers fail their schema")
    if problems:
        return GateVerdict(
            gate="service", passed=False, figures=figures, message="service gate failed: " + "; ".join(problems)
        )
    return GateVerdict(gate="service", passed=True, figures=figures, message="service: latency and throughput held")


def quality_verdict(before: Mapping[str, Figures], after: Mapping[str, Figures], plan: GatePlan) -> GateVerdict:
    """Each node's score after ≥ its score before - max_quality_drop, and ≥ min_quality; a case
    that errored counts as failed (the runner's score)."""
    worst_node, worst_drop = "", float("-inf")  # the node whose score fell most, or rose least
    lowest_node, lowest = "", 2.0
    for node, a in sorted(after.items()):
        b = before.get(node)
        drop = (b.score - a.score) if b is not None else 0.0
        if drop > worst_drop:
            worst_node, worst_drop = node, drop
        if a.score < lowest:
            lowest_node, lowest = node, a.score
    b_worst = before.get(worst_node)
    a_worst = after.get(worst_node)
    figures = {
        "score_before": round(b_worst.score, 4) if b_worst else -1.0,
        "score_after": round(a_worst.score, 4) if a_worst else -1.0,
        "drop": round(max(worst_drop, 0.0), 4),
        "max_quality_drop": plan.max_quality_drop,
        "lowest_score": round(lowest if after else 0.0, 4),
        "min_quality": plan.min_quality,
        "cases": float(sum(a.cases for a in after.values())),
        "errors": float(sum(a.errors for a in after.values())),
    }
    problems = []
    if not after:
        problems.append("no figures from the wave's nodes")
    if worst_drop > plan.max_quality_drop + 1e-9:
        problems.append(
            f"score on {worst_node} fell from {figures['score_before']:.2f} to {figures['score_after']:.2f} "
            f"(a drop of at most {plan.max_quality_drop} allowed)"
        )
    if after and lowest < plan.min_quality:
        problems.append(f"score on {lowest_node} is {lowest:.2f} (at least {plan.min_quality})")
    if problems:
        return GateVerdict(
            gate="quality", passed=False, figures=figures, message="quality gate failed: " + "; ".join(problems)
        )
    return GateVerdict(
        gate="quality",
        passed=True,
        figures=figures,
        message=f"quality: score {figures['score_after']:.2f} (before {figures['score_before']:.2f})",
    )


def evaluation_verdicts(
    before: Mapping[str, Figures], after: Mapping[str, Figures], plan: GatePlan
) -> list[GateVerdict]:
    return [service_verdict(before, after, plan), quality_verdict(before, after, plan)]
