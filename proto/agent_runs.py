"""What travels about agent runs: a node's reports of each run (state, steps, the call waiting for an
operator) and the operator's signed decisions. The specs the runs follow are in proto/agents.py."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.proto.agents import MAX_RESULT_CHARS
from edgefleet.proto.payload_base import _now, _Payload
from edgefleet.proto.topics import check_name

MAX_STEPS_REPORTED = 64
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # a topic level of agent_decisions: no '/', '+', '#'


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 8-64 letters, digits, '_' or '-'")
    return run_id


# -- what travels about runs ------------------------------------------------------------------

Verdict = Literal["ran", "waiting", "approved", "denied", "expired", "refused", "failed"]
RunState = Literal["running", "waiting", "done", "failed", "stopped"]


class AgentStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    kind: Literal["model", "tool"]
    tool: str = ""
    call_id: str = ""
    arguments: str = ""  # JSON text
    verdict: Verdict | Literal[""] = ""
    detail: str = ""  # why (which limit, who approved), or the model's text
    result: Annotated[str, Field(max_length=MAX_RESULT_CHARS)] = ""
    ms: float = 0.0
    ts: float = Field(default_factory=_now)


class ApprovalRequest(BaseModel):
    """An `act` call outside its rule's limits, waiting for an operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    step: int
    tool: str
    arguments: str
    why: str  # which limit it is outside of
    expires_at: float

    @field_validator("run_id")
    @classmethod
    def _run(cls, v: str) -> str:
        return check_run_id(v)


class AgentRunReport(_Payload):
    """A run's state, published by the node on `agent_runs/<node>` at every change (QoS 1)."""

    node_id: str
    run_id: str
    rule: str
    rule_version: str
    trigger: str  # the sensor topic, or "request by <operator>"
    state: RunState
    reason: str = ""  # why it ended (answer, a limit, an error) or what it waits for
    answer: str = ""
    steps: Annotated[list[AgentStep], Field(max_length=MAX_STEPS_REPORTED)] = Field(default_factory=list)
    pending: ApprovalRequest | None = None
    started: float = Field(default_factory=_now)
    ended: float | None = None
    ts: float = Field(default_factory=_now)

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_name("node", v)

    @field_validator("run_id")
    @classmethod
    def _run(cls, v: str) -> str:
        return check_run_id(v)

    @model_validator(mode="after")
    def _pending_is_this_run(self) -> AgentRunReport:
        if self.pending is not None and self.pending.run_id != self.run_id:
            raise ValueError(f"pending approval names run {self.pending.run_id}, not this run {self.run_id}")
        return self


class ApprovalDecision(_Payload):
    """An operator's answer to one pending call, signed by the orchestrator with the site key (like
    desired state) and published retained on `agent_decisions/<node>/<run_id>`."""

    site: str
    node_id: str
    run_id: str
    step: int
    approve: bool
    operator: Annotated[str, Field(min_length=1, max_length=160)]  # who decided ("<account> via <operator>")
    reason: Annotated[str, Field(max_length=512)] = ""
    ts: float = Field(default_factory=_now)
    key_id: Annotated[str, Field(max_length=64)] = ""
    signature: Annotated[str, Field(max_length=256)] = ""

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_name("node", v)

    @field_validator("run_id")
    @classmethod
    def _run(cls, v: str) -> str:
        return check_run_id(v)

    @property
    def approval_id(self) -> str:
        return f"{self.run_id}:{self.step}"
