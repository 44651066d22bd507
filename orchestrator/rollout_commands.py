"""The rollout commands: start, status, pause, resume, promote, abort (proto/commands.py), each a
thin handler over the rollout driver (orchestrator/rollouts/driver.py), which refuses with a
message naming the field. Answers carry the rollout's status (`data.rollout`), or a summary of
every rollout (`data.rollouts`) for `rollout-status` without a name."""

from __future__ import annotations

from typing import Any

from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.rollouts.driver import RolloutDriver
from edgefleet.orchestrator.rollouts.machine import Verb
from edgefleet.proto.commands import (
    RolloutAbortRequest,
    RolloutPauseRequest,
    RolloutPromoteRequest,
    RolloutResumeRequest,
    RolloutStartRequest,
    RolloutStatusRequest,
)
from edgefleet.proto.paging import PAGE_BUDGET_BYTES, json_size
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.release_commands import RolloutVerbRequest
from edgefleet.proto.rollouts import RolloutStatus

MAX_LISTED = 50


def status_data(s: RolloutStatus) -> dict[str, Any]:
    """The whole status as JSON, its oldest events left out while it is over one answer's budget."""
    data = s.model_dump(mode="json")
    while json_size(data) > PAGE_BUDGET_BYTES and len(data["events"]) > 10:
        data["events"] = data["events"][len(data["events"]) // 2 :]
    return data


def summary(s: RolloutStatus) -> dict[str, Any]:
    w = s.wave()
    return {
        "name": s.name,
        "target": s.plan.target.key,
        "section": s.plan.change.section,
        "names": s.plan.change.names(),
        "state": s.state,
        "current": s.current,
        "waves": [{"index": x.index, "nodes": x.nodes, "state": x.state} for x in s.waves],
        "wave_state": w.state if w is not None else "done",
        "reason": s.reason,
        "operator": s.plan.operator,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def describe(s: RolloutStatus) -> str:
    w = s.wave()
    where = f"wave {w.index + 1}/{len(s.waves)} {w.state}" if w is not None else f"{len(s.waves)} waves passed"
    return f"rollout {s.name} {s.state}: {where}" + (f"; {s.reason}" if s.reason else "")


def who(req: RolloutVerbRequest) -> str:
    """Who gave the word, as the rollout's events record it: the signer, or (the web console, which
    signs as itself) "<account> via <signer>"; "" for an unsigned command without an account."""
    if req.on_behalf_of:
        return f"{req.on_behalf_of} via {req.operator}" if req.operator else req.on_behalf_of
    return req.operator


class RolloutCommands:
    def __init__(self, driver: RolloutDriver) -> None:
        self.driver = driver

    def register(self, table: CommandTable) -> None:
        table.register(RolloutStartRequest, self.start)
        table.register(RolloutStatusRequest, self.status)
        table.register(RolloutPauseRequest, lambda r: self.verb(r, "pause"))
        table.register(RolloutResumeRequest, lambda r: self.verb(r, "resume"))
        table.register(RolloutPromoteRequest, lambda r: self.verb(r, "promote"))
        table.register(RolloutAbortRequest, lambda r: self.verb(r, "abort"))

    def start(self, req: RolloutStartRequest) -> CommandResult:
        plan = req.plan.model_copy(update={"operator": req.operator or req.plan.operator})
        s = self.driver.start_rollout(plan)
        waves = "; ".join(f"{i + 1}: {', '.join(w.nodes)}" for i, w in enumerate(s.waves))
        return CommandResult(
            ok=True,
            message=f"rollout {s.name} started on {plan.target.key} in {len(s.waves)} waves ({waves})",
            data={"rollout": status_data(s)},
        )

    def status(self, req: RolloutStatusRequest) -> CommandResult:
        if req.name:
            s = self.driver.get(req.name)
            return CommandResult(ok=True, message=describe(s), data={"rollout": status_data(s)})
        every = self.driver.list()
        listed = [summary(s) for s in every[:MAX_LISTED]]
        return CommandResult(
            ok=True,
            message=f"{len(every)} rollouts" + (f" ({MAX_LISTED} newest shown)" if len(every) > MAX_LISTED else ""),
            data={"rollouts": listed, "total": len(every)},
        )

    def verb(self, req: RolloutVerbRequest, verb: Verb) -> CommandResult:
        s = self.driver.operate(req.name, verb, who(req))
        return CommandResult(ok=True, message=describe(s), data={"rollout": status_data(s)})
