"""A target's nodes cut into waves by a `WavePlan` (pure)."""

from __future__ import annotations

import math

from edgefleet.proto.rollouts import WavePlan


class WaveError(ValueError):
    """A plan that cannot be cut into waves for these nodes (the message names the field)."""

    def __init__(self, message: str, field: str = "waves") -> None:
        super().__init__(message)
        self.field = field


def plan_waves(nodes: list[str], plan: WavePlan) -> list[list[str]]:
    """The waves, each a sorted list of node ids: the canary first (named nodes, or the first
    `canary_count` in id order), then each step's cumulative percentage of all the nodes (rounded
    up, at least one node more than the wave before while any are left). No wave is empty."""
    everyone = sorted(set(nodes))
    if not everyone:
        raise WaveError("the target has no nodes", "target")
    unknown = [n for n in plan.canary if n not in everyone]
    if unknown:
        raise WaveError(f"canary nodes {unknown} are not in the target (its nodes: {everyone[:20]})", "waves.canary")
    if plan.canary_count > len(everyone):
        raise WaveError(
            f"canary_count {plan.canary_count} is more than the target's {len(everyone)} nodes", "waves.canary_count"
        )
    canary = sorted(plan.canary) if plan.canary else everyone[: plan.canary_count]
    rest = [n for n in everyone if n not in canary]
    waves: list[list[str]] = [canary] if canary else []
    done = len(canary)
    for pct in plan.steps:
        upto = max(math.ceil(len(everyone) * pct / 100), done + 1 if done < len(everyone) else done)
        upto = min(upto, len(everyone))
        if upto <= done:
            continue
        waves.append(sorted(rest[done - len(canary) : upto - len(canary)]))
        done = upto
    return waves
