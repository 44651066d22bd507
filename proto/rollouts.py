"""Releases (rollouts): a desired change moved to a target in waves, each wave gated.

The plan (`RolloutPlan`) is what an operator starts; the orchestrator keeps a `RolloutStatus`
for it (orchestrator/rollouts/), written before each of its actions, so a restart goes on from
where it was. The CLI and the console read the status; they never change it but through the
rollout commands (proto/commands.py).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.evaluation_sets import EvaluationSet, Figures
from edgefleet.proto.payloads import ArtifactRef, Target, TemplateSpec
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.topics import check_name

Section = Literal["templates", "rules", "agents", "tools", "adapters", "knowledge", "model"]
SECTION_TYPES: dict[str, type[BaseModel]] = {
    "templates": TemplateSpec,
    "rules": RuleSpec,
    "agents": AgentRule,
    "tools": ToolSpec,
    "adapters": ArtifactRef,
    "knowledge": ArtifactRef,
    "model": ArtifactRef,
}
MAX_EVENTS = 200
MAX_CHANGE_ENTRIES = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseChange(_Strict):
    """What a release changes in one section of the target's desired state: entries set, names removed.

    `model`: `entries` is `{"model": ArtifactRef}` (the base model), or `remove: ["model"]` (back to the
    node's own model)."""

    section: Section
    entries: Annotated[dict[str, Any], Field(max_length=MAX_CHANGE_ENTRIES)] = Field(default_factory=dict)
    remove: Annotated[list[str], Field(max_length=MAX_CHANGE_ENTRIES)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _entries(self) -> ReleaseChange:
        spec = SECTION_TYPES[self.section]
        typed: dict[str, Any] = {}
        for name, value in self.entries.items():
            entry = value if isinstance(value, spec) else spec.model_validate(value)
            if self.section == "model":
                if name != "model":
                    raise ValueError(f"entries: a model release has one entry, named 'model' (not {name!r})")
            elif getattr(entry, "name", name) != name:
                raise ValueError(f"entries.{name}: the entry is named {getattr(entry, 'name', '')!r}")
            typed[name] = entry
        object.__setattr__(self, "entries", typed)
        if not typed and not self.remove:
            raise ValueError("a release changes something: give entries or names to remove")
        if set(typed) & set(self.remove):
            raise ValueError(f"names both set and removed: {sorted(set(typed) & set(self.remove))}")
        if self.section == "model" and any(n != "model" for n in self.remove):
            raise ValueError("remove: a model release removes only 'model'")
        return self

    def names(self) -> list[str]:
        return sorted({*self.entries, *self.remove})


class WavePlan(_Strict):
    """Canary first (named nodes, or a count of the target's nodes in id order), then cumulative
    percentages of the target's nodes ending at 100, each wave soaked `soak_s` seconds."""

    canary: list[str] = Field(default_factory=list)
    canary_count: Annotated[int, Field(ge=0, le=1000)] = 0
    steps: list[Annotated[int, Field(gt=0, le=100)]] = Field(default_factory=lambda: [100])
    soak_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 30.0
    apply_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 120.0

    @field_validator("canary")
    @classmethod
    def _canary(cls, v: list[str]) -> list[str]:
        for n in v:
            check_name("node", n)
        if len(set(v)) != len(v):
            raise ValueError("canary names a node twice")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 100:
            raise ValueError("steps are cumulative percentages ending at 100 (e.g. [50, 100])")
        if any(b <= a for a, b in pairwise(v)):
            raise ValueError(f"steps {v} must grow")
        return v

    @model_validator(mode="after")
    def _one_canary(self) -> WavePlan:
        if self.canary and self.canary_count:
            raise ValueError("give canary (node ids) or canary_count, not both")
        return self


class GatePlan(_Strict):
    """The gates every wave passes: health, service (against the same nodes before), quality."""

    health: bool = True
    max_error_reports: Annotated[int, Field(ge=0)] = 0  # new error reports from the wave's nodes during the wave
    max_p95_ratio: Annotated[float, Field(gt=0)] = 2.0  # p95 latency after / before
    min_tokens_per_s_ratio: Annotated[float, Field(ge=0)] = 0.5  # tokens/s after / before
    max_quality_drop: Annotated[float, Field(ge=0, le=1)] = 0.0  # score after ≥ before - this
    min_quality: Annotated[float, Field(ge=0, le=1)] = 0.0


class RolloutPlan(_Strict):
    name: str
    target: Target
    change: ReleaseChange
    waves: WavePlan = Field(default_factory=WavePlan)
    gates: GatePlan = Field(default_factory=GatePlan)
    evaluation: EvaluationSet | None = None
    operator: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("rollout", v)


class GateVerdict(_Strict):
    gate: Literal["health", "service", "quality"]
    passed: bool
    figures: dict[str, float] = Field(default_factory=dict)
    message: str = ""


WaveStateName = Literal["pending", "baseline", "applying", "soaking", "evaluating", "passed", "failed", "rolled_back"]


class _Mutable(BaseModel):
    """Strict, but not frozen: the state machine works on a deep copy of the status it is given."""

    model_config = ConfigDict(extra="forbid")


class WaveState(_Mutable):
    index: int
    nodes: list[str]
    state: WaveStateName = "pending"
    generations: dict[str, int] = Field(default_factory=dict)  # node → generation of node:<id> published for it
    verdicts: list[GateVerdict] = Field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    # beyond the contract's fields: what the machine needs to resume
    applied_at: float | None = None  # when the wave's documents were published
    soak_started_at: float | None = None
    promoted: bool = False  # the operator skipped the rest of this wave's soak
    baseline: dict[str, Figures] = Field(default_factory=dict)  # before the change, per node
    after: dict[str, Figures] = Field(default_factory=dict)  # the evaluation after it, per node


RolloutState = Literal["running", "paused", "held", "succeeded", "failed", "aborted"]


class RolloutEvent(_Strict):
    ts: float
    message: str


class RolloutStatus(_Mutable):
    plan: RolloutPlan
    state: RolloutState = "running"
    waves: list[WaveState]
    current: int = 0  # the wave in progress; len(waves): every wave passed
    reason: str = ""
    events: list[RolloutEvent] = Field(default_factory=list)
    created_at: float
    updated_at: float
    # node → its node-level entries of the changed names before the release ({} : none); recorded
    # before the node's document is first published, restored by a rollback
    previous: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rollback_pending: list[str] = Field(default_factory=list)  # nodes still to return to `previous`
    completed: bool = False  # the release is in the target's own document and the node overrides are gone

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def terminal(self) -> bool:
        return self.state in ("succeeded", "failed", "aborted") and not self.rollback_pending

    def wave(self) -> WaveState | None:
        return self.waves[self.current] if self.current < len(self.waves) else None

    def moved_nodes(self) -> list[str]:
        """Nodes whose documents carry the release (or may: a publish in flight), in wave order."""
        live = ("applying", "soaking", "evaluating", "passed", "failed")
        return [n for w in self.waves if w.state in live for n in w.nodes]
