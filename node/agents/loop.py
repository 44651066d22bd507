"""One agent run: model → tool calls → policy → bindings → results → model, until an answer or a limit.

`advance(run_id)` takes a run from where the ledger has it and goes on until it ends or must wait
for an operator; it never holds a worker while it waits. Each step is saved before the next one
starts (the conversation, the calls not handled yet with their step numbers fixed when the model
made them, the counters), so a node killed at any point resumes the run at the same step. An
`act` call's effect row is written before it is published (`ledger.begin_effect`): the same step
reached again finds it and publishes nothing more. The fail point `agent.before_publish` sits
between the effect row (after an approval was recorded) and the publish.

Limits: `max_steps` model turns, `max_tool_calls` calls (every call, refused ones too),
`max_seconds` of the run's own time (approval waits excluded); a run at one ends `stopped` with a
reason naming it. An approval that expires ends the run `stopped`, "approval expired".
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgefleet.node.agents import conversation as conv
from edgefleet.node.agents.bindings import NEXT, BindingError, Bindings, frame
from edgefleet.node.agents.ledger import AgentLedger, RunRow
from edgefleet.node.agents.policy import Call, Decision, ToolPolicy, Verdict, parse_arguments
from edgefleet.node.control.faults import AGENT_BEFORE_PUBLISH
from edgefleet.node.errors import TRANSIENT, EdgefleetError
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import GenerateInput
from edgefleet.node.tool_calls.turn import run_turn
from edgefleet.node.tool_calls.types import ToolChoice
from edgefleet.plumbing import failpoints
from edgefleet.proto.agent_runs import AgentRunReport, AgentStep, RunState
from edgefleet.proto.agents import MAX_RESULT_CHARS, AgentRule, ToolSpec
from edgefleet.proto.templates import TemplateError

log = logging.getLogger("edgefleet.node.agents")

BUSY_RETRY_S = 0.5  # the engine's queue is full: try the turn again after this (within max_seconds)
Report = Callable[[AgentRunReport, AgentRule], None]


def new_run_id() -> str:
    return f"run-{secrets.token_hex(8)}"


class AgentLoop:
    def __init__(
        self, service: NodeService, ledger: AgentLedger, bindings: Bindings, node_id: str, report: Report
    ) -> None:
        self.service, self.ledger, self.bindings = service, ledger, bindings
        self.node_id = node_id
        self.report = report
        self._answer_now: set[str] = set()  # runs whose next turn must answer (their last turn only repeated calls)

    # -- a new run ----------------------------------------------------------------------------------
    def create(
        self,
        rule: AgentRule,
        tools: dict[str, ToolSpec],
        trigger: str,
        variables: dict[str, str],
        source_key: str | None = None,
    ) -> RunRow | None:
        """Record a run for this trigger (None: the trigger started one already); it is `running`, or
        `failed` at once when its goal does not render."""
        run = RunRow(
            id=new_run_id(),
            rule=rule.name,
            rule_version=rule.version,
            trigger=trigger,
            state="running",
            started=time.time(),
            spec=conv.snapshot(rule, tools),
            messages=[],
        )
        try:
            run.messages = conv.opening(rule, conv.render_goal(rule, variables))
        except TemplateError as e:
            run.state, run.reason, run.ended = "failed", f"goal: {e}", time.time()
        if not self.ledger.create_run(run, source_key):
            return None
        log.info("agent run started", extra={"run": run.id, "rule": rule.label, "trigger": trigger[:200]})
        self._report(run)
        return run

    # -- going on with a run ------------------------------------------------------------------------
    def advance(self, run_id: str) -> None:
        run = self.ledger.run(run_id)
        if run is None or run.state not in ("running", "waiting"):
            return
        rule, tools = conv.spec_of(run)
        policy = ToolPolicy(rule, tools)
        clock = time.monotonic()

        def tick() -> None:
            nonlocal clock
            now = time.monotonic()
            run.elapsed_s += now - clock
            clock = now

        while run.state in ("running", "waiting"):
            tick()
            if run.elapsed_s >= rule.limits.max_seconds:
                self._end(run, "stopped", f"max_seconds reached: the run took {run.elapsed_s:.1f} s of its own time")
                return
            if run.pending:
                if not self._call(run, rule, tools, policy, tick):
                    return  # waiting for an operator
                continue
            if run.turns >= rule.limits.max_steps:
                self._end(run, "stopped", f"max_steps reached: {run.turns} model turns (limits.max_steps)")
                return
            self._turn(run, rule, tools, tick)

    def _turn(self, run: RunRow, rule: AgentRule, tools: dict[str, ToolSpec], tick: Callable[[], None]) -> None:
        # After a turn that only repeated earlier calls, the model is asked for its answer, with no
        # tools and the run so far in words: the results it needs are in it already.
        answer_now = run.id in self._answer_now
        self._answer_now.discard(run.id)
        inp = GenerateInput(
            messages=conv.to_turns(conv.answer_turns(run.messages) if answer_now else run.messages),
            tools=() if answer_now else conv.tool_defs(rule, tools),
            tool_choice=None if answer_now else ToolChoice("auto"),
            max_tokens=rule.limits.max_tokens,
            temperature=rule.temperature,
            adapter=rule.adapter or "",
        )
        started = time.monotonic()
        try:
            result = run_turn(
                self.service, inp, f"agent-{secrets.token_hex(6)}", max(1.0, rule.limits.max_seconds - run.elapsed_s)
            )
        except TRANSIENT as e:
            log.info("engine busy; the agent turn waits", extra={"run": run.id, "reason": str(e)})
            time.sleep(BUSY_RETRY_S)
            return
        except (EdgefleetError, TimeoutError) as e:
            tick()
            self._end(run, "failed", f"model turn {run.turns + 1} failed: {e}")
            return
        tick()
        ms = (time.monotonic() - started) * 1000
        run.turns += 1
        calls = list(result.tool_calls)
        model_step = conv.step(
            run.take_step(),
            "model",
            detail=result.content or f"{len(calls)} tool call(s)",
            ms=round(ms, 1),
        )
        if calls and conv.repeats(run.messages, calls):
            names = ", ".join(c.name for c in calls)
            repeated = conv.step(
                model_step.index,
                "model",
                detail=f"repeated {names} with the same arguments; asked for the answer",
                ms=round(ms, 1),
            )
            self._answer_now.add(run.id)
            self.ledger.save(run, [repeated])
            self._report(run)
            return
        run.messages.append(conv.assistant(result.content, calls))
        if not calls:
            run.answer = result.content.strip()
            self._end(run, "done", "answered", [model_step])
            return
        run.pending = [{"step": run.take_step(), "id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]
        self.ledger.save(run, [model_step])
        self._report(run)

    def _call(
        self,
        run: RunRow,
        rule: AgentRule,
        tools: dict[str, ToolSpec],
        policy: ToolPolicy,
        tick: Callable[[], None],
    ) -> bool:
        """Handle the first pending call; False when the run now waits for an operator."""
        call = run.pending[0]
        index, name, arguments = int(call["step"]), str(call["name"]), str(call["arguments"])
        approval = self.ledger.approval(run.id, index)
        decision: Decision | None = None
        operator = ""
        if approval is not None:
            if approval.state == "pending":
                if approval.expires_at > time.time():
                    if run.state != "waiting":
                        run.state = "waiting"
                        self.ledger.save(run)
                    return False
                self.ledger.decide(run.id, index, "expired")
                decision = "expired"
            else:
                decision, operator = approval.state, approval.operator
        verdict = policy.decide(
            Call(name, arguments), self.ledger.counters(rule.name), run.tool_calls, decision, operator
        )
        started = time.monotonic()
        fields: dict[str, Any] = {"tool": name, "call_id": str(call["id"]), "arguments": arguments}
        if verdict.action == "needs_approval":
            expires = time.time() + rule.limits.approval_timeout_s
            run.reason = f"waits for an operator to approve {name}: {verdict.why}"
            self.ledger.request_approval(run, index, name, arguments, verdict.why, expires)
            waiting = conv.step(index, "tool", verdict="waiting", detail=verdict.why, **fields)
            self.ledger.save(run, [waiting])
            log.info("agent call waits for approval", extra={"run": run.id, "tool": name, "why": verdict.why})
            self._report(run)
            return False
        ran: list[str] = []
        if verdict.action == "run":
            text, outcome = self._execute(run, rule.name, index, tools[name], arguments, decision)
            if outcome != "failed":
                ran.append(name)
        else:
            text, outcome = f"refused by the site's policy: {verdict.why}{NEXT}", _refusal(decision)
        if len(text) > MAX_RESULT_CHARS:  # a refusal or failure naming long arguments
            text = text[: MAX_RESULT_CHARS - len(NEXT) - 2] + " …" + NEXT
        tick()
        ms = round((time.monotonic() - started) * 1000, 1)
        done = conv.step(index, "tool", verdict=outcome, detail=verdict.why, result=text, ms=ms, **fields)
        run.pending = run.pending[1:]
        run.tool_calls += 1
        run.state, run.reason = "running", ""
        run.messages.append(conv.tool_result(str(call["id"]), name, text))
        if verdict.stop or decision == "expired":
            self._end(run, "stopped", _stop_reason(verdict), [done], ran)
            return True
        self.ledger.save(run, [done], ran)
        self._report(run)
        return True

    def _execute(
        self, run: RunRow, rule: str, index: int, spec: ToolSpec, arguments: str, decision: Decision | None
    ) -> tuple[str, str]:
        """Run an allowed call: (the framed result, the step's verdict)."""
        ok = "approved" if decision == "approved" else "ran"
        try:
            args = parse_arguments(Call(spec.name, arguments), spec)
            if spec.kind == "read":
                return self.bindings.read(spec, args), ok
            topic = self.bindings.actuator_topic(spec, args)
            effect = self.ledger.begin_effect(
                run.id, index, spec.name, topic, self.bindings.effect_payload(rule, run.id, index, args)
            )
            if effect.state == "done":
                return _published(spec.name, topic, effect.key), ok
            failpoints.hit(AGENT_BEFORE_PUBLISH)
            if self.bindings.publish(effect):
                return _published(spec.name, topic, effect.key), ok
            waiting = f"queued for {topic}; the broker has not acknowledged it yet (idempotency key {effect.key})"
            return frame(spec.name, waiting), ok
        except BindingError as e:
            return f"failed: {e}{NEXT}", "failed"
        except (EdgefleetError, OSError) as e:
            return f"failed: {type(e).__name__}: {e}{NEXT}", "failed"

    # -- ends and reports ---------------------------------------------------------------------------
    def _end(
        self, run: RunRow, state: RunState, reason: str, steps: Sequence[AgentStep] = (), ran: Sequence[str] = ()
    ) -> None:
        run.state, run.reason, run.ended = state, reason, time.time()
        run.pending = []
        self.ledger.save(run, steps, ran)
        log.info("agent run ended", extra={"run": run.id, "rule": run.rule, "state": state, "reason": reason[:300]})
        self._report(run)

    def expire(self, run_id: str, step: int) -> None:
        """An approval's time ran out: the run ends (its worker goes on through `advance`)."""
        self.ledger.decide(run_id, step, "expired")

    def _report(self, run: RunRow) -> None:
        rule, _ = conv.spec_of(run)
        pending = self.ledger.approval(run.id, int(run.pending[0]["step"])) if run.pending else None
        try:
            self.report(conv.report(self.node_id, run, self.ledger.steps(run.id), pending), rule)
        except Exception:  # a report that cannot go out must not end the run: the ledger has it
            log.exception("agent run report not sent", extra={"run": run.id})


def _published(tool: str, topic: str, key: str) -> str:
    return frame(tool, f"published on {topic} (idempotency key {key})")


def _refusal(decision: Decision | None) -> str:
    return {"denied": "denied", "expired": "expired"}.get(decision or "", "refused")


def _stop_reason(verdict: Verdict) -> str:
    if verdict.stop:
        return f"{verdict.stop} reached: {verdict.why}"
    return "approval expired"
