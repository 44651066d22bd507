"""Operator commands on agent runs: list them, show one, the approval queue, approve and deny.

`approve` and `deny` answer the call a run waits on: the orchestrator checks the run is known,
has not ended, waits on that very step, has not expired and was not answered already; then signs
an `ApprovalDecision` naming the operator with the site key (proto/signing.py `sign_decision`, as
desired state is signed) and publishes it retained on `agents/decisions/<node>/<run>`, where
the node reads it (and a node that was offline finds it when it comes back). The decision is kept
beside the run (orchestrator/agent_runs.py), which clears the retained message once the run ended.

Who decided is the operator whose signature the command carried; on a site that takes unsigned
commands no one is named (`UNSIGNED_OPERATOR`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgefleet.orchestrator.agent_runs import AgentRunStore, StoredRun
from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.desired_edits import DesiredSigner, PublishRetained
from edgefleet.proto.agent_commands import (
    AgentRunRequest,
    AgentRunsRequest,
    ApprovalsRequest,
    ApproveRequest,
    DecisionRequest,
    DenyRequest,
)
from edgefleet.proto.agent_runs import ApprovalDecision
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.signing import sign_decision
from edgefleet.proto.topics import Topics, valid_name

log = logging.getLogger("edgefleet.orchestrator.agents")

UNSIGNED_OPERATOR = "(unsigned command)"


def _when(ts: float, now: float) -> str:
    s = ts - now
    return f"in {s:.0f} s" if s >= 0 else f"{-s:.0f} s ago"


class AgentCommands:
    def __init__(
        self,
        site: str,
        topics: Topics,
        store: AgentRunStore,
        publish_retained: PublishRetained,
        signer: DesiredSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site, self.topics, self.store = site, topics, store
        self.publish_retained, self.signer, self.clock = publish_retained, signer, clock

    def register(self, table: CommandTable) -> None:
        table.register(AgentRunsRequest, self.runs)
        table.register(AgentRunRequest, self.run)
        table.register(ApprovalsRequest, self.approvals)
        table.register(ApproveRequest, self.decide)
        table.register(DenyRequest, self.decide)

    def runs(self, req: AgentRunsRequest) -> CommandResult:
        """One page of runs, newest first: `runs` (no steps), `total`, `offset`, `next_offset`."""
        data = self.store.page(req.node, req.rule, req.state, req.offset, req.limit)
        return CommandResult(ok=True, data=data)

    def _one(self, run_id: str, node: str) -> StoredRun:
        found = self.store.runs(run_id, node)
        where = f" on node {brief(node)}" if node else ""
        if not found:
            raise CommandError(
                f"no agent run {brief(run_id)}{where} has been reported to this orchestrator (see `agent-runs`)",
                ErrorCode.NOT_FOUND,
                field="run_id",
            )
        if len(found) > 1:
            nodes = ", ".join(sorted(r.report.node_id for r in found))
            raise CommandError(f"run {run_id} was reported by several nodes ({nodes}); name the node", field="node")
        return found[0]

    def run(self, req: AgentRunRequest) -> CommandResult:
        """One run's latest report with its steps (`run`) and the decisions sent for it (`decisions`)."""
        stored = self._one(req.run_id, req.node)
        return CommandResult(
            ok=True,
            data={"run": stored.report.model_dump(mode="json"), "decisions": stored.decisions},
        )

    def approvals(self, req: ApprovalsRequest) -> CommandResult:
        """The calls waiting for an operator, soonest to expire first (`approvals`)."""
        waiting = self.store.waiting(self.clock())
        return CommandResult(ok=True, data={"approvals": waiting, "total": len(waiting)})

    def decide(self, req: DecisionRequest) -> CommandResult:
        approve = isinstance(req, ApproveRequest)
        verb = "approve" if approve else "deny"
        node = req.node.removeprefix("node:")
        if not valid_name(node):
            raise CommandError(f"node {brief(node)} is not a valid node id", field="node")
        stored = self._one(req.run_id, node)
        run, now = stored.report, self.clock()
        label = f"run {run.run_id} of rule {run.rule} on node {node}"
        if stored.ended:
            raise CommandError(
                f"cannot {verb}: {label} has ended ({run.state}{': ' + run.reason if run.reason else ''}); "
                f"nothing waits for a decision",
                field="run_id",
            )
        pending = run.pending if run.state == "waiting" else None
        if pending is None or pending.step != req.step:
            waits = (
                f"waits at step {pending.step} ({pending.tool})" if pending else f"is {run.state}, waiting on no call"
            )
            raise CommandError(f"cannot {verb} step {req.step}: {label} {waits}", field="step")
        if pending.expires_at <= now:
            raise CommandError(
                f"cannot {verb}: the approval of step {req.step} of {label} expired {_when(pending.expires_at, now)}",
                field="step",
            )
        earlier = stored.decision(req.step)
        if earlier is not None:
            said = "approved" if earlier.get("approve") else "denied"
            raise CommandError(
                f"step {req.step} of {label} was already {said} by {earlier.get('operator')} "
                f"{_when(float(earlier.get('ts', 0)), now)}",
                field="step",
            )
        decision = ApprovalDecision(
            site=self.site,
            node_id=node,
            run_id=run.run_id,
            step=req.step,
            approve=approve,
            operator=(f"{req.on_behalf_of} via {req.operator}" if req.on_behalf_of else req.operator)
            if req.operator
            else UNSIGNED_OPERATOR,
            reason=req.reason,
        )
        key = self.signer.private() if self.signer is not None else None
        if key is not None:
            decision = sign_decision(decision, key)
        self.store.record_decision(decision)
        self.publish_retained(self.topics.agent_decisions(node, run.run_id), decision.dumps())
        log.info(
            "agent call decided",
            extra={
                "node": node,
                "run_id": run.run_id,
                "step": req.step,
                "tool": pending.tool,
                "approve": approve,
                "operator": decision.operator,
                "signed": bool(decision.signature),
            },
        )
        unsigned = "" if decision.signature else " (unsigned: the site has no key; nodes that pin one refuse it)"
        return CommandResult(
            ok=True,
            message=f"{'approved' if approve else 'denied'} step {req.step} ({pending.tool} {pending.arguments}) of "
            f"{label} as {decision.operator}{unsigned}",
            data={"decision": decision.model_dump(mode="json")},
        )
