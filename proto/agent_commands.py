"""Operator commands about site tools, agent rules and their runs: one request model per op.

Part of the command union in proto/commands.py (`Command`); split out as proto/release_commands.py is.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from edgefleet.proto.agent_runs import RUN_ID_RE, RunState
from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.command_base import (
    CommandRequest,
    FilterText,
    NonEmpty,
    OnBehalfOf,
    PagedRequest,
    RemoveEntryRequest,
)


class SetToolRequest(CommandRequest):
    """A site tool into `target`'s desired state (replacing one of the same name)."""

    op: Literal["set-tool"] = "set-tool"
    target: NonEmpty
    tool: ToolSpec
    force: bool = False  # accept a version older than the one desired now
    new_group: bool = False


class RemoveToolRequest(RemoveEntryRequest):
    op: Literal["rm-tool"] = "rm-tool"


class SetAgentRequest(CommandRequest):
    """An agent rule into `target`'s desired state; every tool it names must be desired for the target."""

    op: Literal["set-agent"] = "set-agent"
    target: NonEmpty
    agent: AgentRule
    force: bool = False
    new_group: bool = False


class RemoveAgentRequest(RemoveEntryRequest):
    op: Literal["rm-agent"] = "rm-agent"


class ToolsRequest(PagedRequest):
    """The desired tools per target (one page of targets, by target key)."""

    op: Literal["tools"] = "tools"
    target: FilterText = ""


class AgentsRequest(PagedRequest):
    """The desired agent rules per target (one page of targets, by target key)."""

    op: Literal["agents"] = "agents"
    target: FilterText = ""


RunId = Annotated[str, Field(pattern=RUN_ID_RE.pattern)]


class AgentRunsRequest(PagedRequest):
    """The latest report of each agent run, newest first, without the steps' bodies."""

    op: Literal["agent-runs"] = "agent-runs"
    node: FilterText = ""
    rule: FilterText = ""
    state: RunState | Literal[""] = ""


class AgentRunRequest(CommandRequest):
    """One run's latest report, with its steps and the decisions sent for it."""

    op: Literal["agent-run"] = "agent-run"
    run_id: RunId
    node: FilterText = ""  # only needed when two nodes reported runs of the same id


class ApprovalsRequest(CommandRequest):
    """The calls waiting for an operator's approval now (none expired, none answered yet)."""

    op: Literal["approvals"] = "approvals"


class DecisionRequest(CommandRequest):
    """An operator's answer to the call run `run_id` of node `node` waits on at `step`."""

    names_operator: ClassVar[bool] = True
    node: NonEmpty
    run_id: RunId
    step: Annotated[int, Field(ge=0)]
    reason: Annotated[str, Field(max_length=512)] = ""
    on_behalf_of: OnBehalfOf = ""  # the decision names "<account> via <signer>"


class ApproveRequest(DecisionRequest):
    op: Literal["approve"] = "approve"


class DenyRequest(DecisionRequest):
    op: Literal["deny"] = "deny"
