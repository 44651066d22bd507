"""The state machine of one rollout (pure): `advance(status, observation, now) -> (status, actions)`.

The actions due are a function of the status alone (`due_actions`): a status written before its
actions run says, after a restart, what is still to do. So a wave in `applying` without its
generations applies again (the driver then takes a node document that already carries the release
as published, without publishing it again), a wave in `evaluating` evaluates again (a gate is
never skipped), and a wave that `passed` is never applied again.

```
pending ─> baseline ─> applying ─> soaking ─> evaluating ─> passed ─> (next wave … Complete)
              (evaluation set)   (nodes moved)  (soak over,     │
                                                 health ok)     └─> failed ─> rolled_back
```
Any gate that fails (health while applying or soaking, service or quality after the evaluation)
fails the wave and the rollout stops, `failed`: the wave's nodes and those of the waves that passed
before it go back to their previous documents (as Argo Rollouts returns to the stable version), so
no node stays on a failed release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edgefleet.orchestrator.rollouts.gates import Health, evaluation_verdicts, health_verdict
from edgefleet.proto.evaluation_sets import Figures
from edgefleet.proto.rollouts import MAX_EVENTS, RolloutEvent, RolloutPlan, RolloutStatus, WaveState


# -- actions (what the driver does next) ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunBaseline:
    nodes: list[str]


@dataclass(frozen=True)
class ApplyWave:
    nodes: list[str]


@dataclass(frozen=True)
class RunEvaluation:
    nodes: list[str]


@dataclass(frozen=True)
class Rollback:
    nodes: list[str]


@dataclass(frozen=True)
class Complete:
    pass


Action = RunBaseline | ApplyWave | RunEvaluation | Rollback | Complete


# -- observations (what the driver saw, or what an action gave) ------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """The current wave's nodes as the fleet shows them now."""

    moved: frozenset[str] = frozenset()  # report the generation published for them (or a newer one)
    serving: frozenset[str] = frozenset()  # online
    error_reports: int = 0  # new error reports from them since their wave was applied
    refused: frozenset[str] = frozenset()  # report an error about what they were sent


@dataclass(frozen=True)
class Restarted:
    """The orchestrator started again with this rollout unfinished."""


@dataclass(frozen=True)
class BaselineDone:
    figures: Mapping[str, Figures]


@dataclass(frozen=True)
class Applied:
    generations: Mapping[str, int]  # node → generation of its document carrying the release
    published: list[str] = field(default_factory=list)  # nodes whose document was published now (others held it)


@dataclass(frozen=True)
class EvaluationDone:
    figures: Mapping[str, Figures]


@dataclass(frozen=True)
class RolledBack:
    nodes: list[str]


@dataclass(frozen=True)
class Completed:
    pass


@dataclass(frozen=True)
class ActionFailed:
    action: Literal["baseline", "apply", "evaluation", "rollback", "complete"]
    message: str


Verb = Literal["pause", "resume", "promote", "abort"]


@dataclass(frozen=True)
class Operator:
    verb: Verb
    who: str = ""


Observation = (
    Tick | Restarted | BaselineDone | Applied | EvaluationDone | RolledBack | Completed | ActionFailed | Operator
)


class RolloutRefused(ValueError):
    """An operator's verb that does not fit the rollout's state (the message says why)."""


# -- the machine -----------------------------------------------------------------------------------------------
def new_status(plan: RolloutPlan, waves: list[list[str]], now: float) -> RolloutStatus:
    status = RolloutStatus(
        plan=plan,
        waves=[WaveState(index=i, nodes=nodes) for i, nodes in enumerate(waves)],
        created_at=now,
        updated_at=now,
    )
    sizes = " + ".join(str(len(w)) for w in waves)
    _event(status, now, f"started by {plan.operator or 'an unsigned command'}: {plan.change.section} "
           f"{', '.join(plan.change.names())} to {plan.target.key} in {len(waves)} waves ({sizes} nodes)")  # fmt: skip
    return status


def due_actions(status: RolloutStatus) -> list[Action]:
    """What is to be done now, from the status alone."""
    actions: list[Action] = []
    if status.rollback_pending:
        actions.append(Rollback(list(status.rollback_pending)))
    if status.state != "running":
        return actions
    w = status.wave()
    if w is None:
        if not status.completed:
            actions.append(Complete())
    elif w.state == "baseline":
        actions.append(RunBaseline(list(w.nodes)))
    elif w.state == "applying" and not w.generations:
        actions.append(ApplyWave(list(w.nodes)))
    elif w.state == "evaluating":
        actions.append(RunEvaluation(list(w.nodes)))
    return actions


def advance(status: RolloutStatus, obs: Observation, now: float) -> tuple[RolloutStatus, list[Action]]:
    """The status after `obs` (a new object; `status` is left as it was) and the actions then due."""
    s = status.model_copy(deep=True)
    _observe(s, obs, now)
    _step(s, obs if isinstance(obs, Tick) else None, now)
    s.updated_at = now
    return s, due_actions(s)


def _observe(s: RolloutStatus, obs: Observation, now: float) -> None:
    w = s.wave()
    if isinstance(obs, Operator):
        _operator(s, obs, now)
    elif isinstance(obs, Restarted):
        where = f"wave {w.index + 1} {w.state}" if w is not None else "after the last wave"
        again = "; its evaluation runs again" if w is not None and w.state == "evaluating" else ""
        _event(s, now, f"orchestrator restarted: {s.state} at {where}{again}")
    elif isinstance(obs, BaselineDone):
        if s.state == "running" and w is not None and w.state == "baseline":
            w.baseline = dict(obs.figures)
            w.state = "applying"
            _event(s, now, f"wave {w.index + 1}: baseline measured ({_scores(obs.figures)}); applying")
    elif isinstance(obs, Applied):
        if w is not None and w.state == "applying" and not w.generations:
            w.generations = dict(obs.generations)
            w.applied_at = now
            held = [n for n in w.nodes if n not in obs.published]
            note = f"; already held by {', '.join(held)}" if held else ""
            gens = ", ".join(f"{n}@{g}" for n, g in sorted(obs.generations.items()))
            _event(s, now, f"wave {w.index + 1}: published to {', '.join(obs.published) or 'none'} ({gens}){note}")
    elif isinstance(obs, EvaluationDone):
        if s.state == "running" and w is not None and w.state == "evaluating":
            w.after = dict(obs.figures)
            w.verdicts.extend(evaluation_verdicts(w.baseline, w.after, s.plan.gates))
            failed = [v for v in w.verdicts if not v.passed]
            if failed:
                _fail(s, w, now, "; ".join(v.message for v in failed))
            else:
                _pass(s, w, now)
    elif isinstance(obs, RolledBack):
        done = set(obs.nodes)
        s.rollback_pending = [n for n in s.rollback_pending if n not in done]
        for wave in s.waves:
            if wave.state in ("applying", "soaking", "evaluating", "passed", "failed") and set(wave.nodes) <= done:
                wave.state = "rolled_back"
                wave.finished_at = wave.finished_at or now
        _event(s, now, f"rolled back to the previous generation: {', '.join(obs.nodes)}")
    elif isinstance(obs, Completed):
        if s.state == "running" and w is None and not s.completed:
            s.completed, s.state = True, "succeeded"
            s.reason = f"every wave passed; the release is in {s.plan.target.key}'s own document"
            _event(s, now, f"succeeded: {s.reason}")
    elif isinstance(obs, ActionFailed):
        if obs.action in ("rollback", "complete"):
            _event(s, now, f"{obs.action} failed, tried again: {obs.message}")
        elif s.state == "running":
            s.state, s.reason = "held", f"held: the {obs.action} could not run: {obs.message}"
            _event(s, now, f"{s.reason} (resume to try again, or abort)")


def _step(s: RolloutStatus, tick: Tick | None, now: float) -> None:
    """Move on as far as the status and the latest tick allow."""
    while s.state == "running":
        w = s.wave()
        if w is None:
            return
        if w.state == "pending":
            w.started_at = now
            w.state = "baseline" if s.plan.evaluation is not None else "applying"
            label = "canary" if w.index == 0 and len(s.waves) > 1 else "wave"
            _event(s, now, f"wave {w.index + 1} ({label}: {', '.join(w.nodes)}) started")
            continue
        if tick is None:
            return
        if w.state == "applying" and w.generations:
            waited = now - (w.applied_at or now)
            health = _health(w, tick)
            if not health.not_moved and not health.refused:
                w.state, w.soak_started_at = "soaking", now
                _event(
                    s, now, f"wave {w.index + 1}: every node on the new generation; soaking {s.plan.waves.soak_s:g} s"
                )
                continue
            if health.refused or waited > s.plan.waves.apply_timeout_s:
                why = "" if health.refused else f" within {s.plan.waves.apply_timeout_s:g} s"
                _health_failed(s, w, health, now, why)
            return
        if w.state == "soaking":
            health = _health(w, tick)
            verdict = health_verdict(health, s.plan.gates)
            if not verdict.passed:
                _health_failed(s, w, health, now, "")
                return
            soaked = now - (w.soak_started_at or now) >= s.plan.waves.soak_s
            if not (soaked or w.promoted):
                return
            w.verdicts.append(verdict)
            if s.plan.evaluation is not None:
                w.state = "evaluating"
                _event(s, now, f"wave {w.index + 1}: health passed; evaluating")
                return
            _pass(s, w, now)
            continue
        return


def _health(w: WaveState, tick: Tick) -> Health:
    return Health(
        nodes=len(w.nodes),
        offline=[n for n in w.nodes if n not in tick.serving],
        not_moved=[n for n in w.nodes if n not in tick.moved],
        error_reports=tick.error_reports,
        refused=[n for n in w.nodes if n in tick.refused],
    )


def _health_failed(s: RolloutStatus, w: WaveState, health: Health, now: float, why: str) -> None:
    verdict = health_verdict(health, s.plan.gates)
    if verdict.passed:  # the health gate is off: only the nodes' move can still hold the wave
        verdict = verdict.model_copy(update={"passed": False, "message": "health gate failed: " + (
            f"not on the new generation{why}: {', '.join(health.not_moved)}")})  # fmt: skip
    elif why:
        verdict = verdict.model_copy(update={"message": verdict.message + why})
    w.verdicts.append(verdict)
    _fail(s, w, now, verdict.message)


def _pass(s: RolloutStatus, w: WaveState, now: float) -> None:
    w.state, w.finished_at = "passed", now
    s.current += 1
    left = len(s.waves) - s.current
    _event(s, now, f"wave {w.index + 1} passed ({'; '.join(v.message for v in w.verdicts)}); "
           + (f"{left} waves left" if left else "completing"))  # fmt: skip


def _fail(s: RolloutStatus, w: WaveState, now: float, message: str) -> None:
    w.state, w.finished_at = "failed", now
    s.state, s.reason = "failed", f"wave {w.index + 1} ({', '.join(w.nodes)}): {message}"
    # every node on the release goes back, the earlier waves' too: a failed release leaves none on it
    moved = s.moved_nodes()
    s.rollback_pending = list(dict.fromkeys([*s.rollback_pending, *moved]))
    _event(s, now, f"failed: {s.reason}; rolling back {', '.join(moved)}")


def _operator(s: RolloutStatus, op: Operator, now: float) -> None:
    who = f" by {op.who}" if op.who else ""
    name = s.plan.name
    if s.state in ("succeeded", "failed", "aborted"):
        raise RolloutRefused(f"rollout {name} is {s.state}: nothing to {op.verb}")
    w = s.wave()
    if op.verb == "pause":
        if s.state == "paused":
            raise RolloutRefused(f"rollout {name} is paused already")
        s.state, s.reason = "paused", f"paused{who}"
        _event(s, now, f"paused{who}")
    elif op.verb == "resume":
        if s.state == "running":
            raise RolloutRefused(f"rollout {name} is running: nothing to resume")
        s.state, s.reason = "running", ""
        _event(s, now, f"resumed{who}")
    elif op.verb == "promote":
        if w is None or w.state not in ("pending", "baseline", "applying", "soaking"):
            where = f"wave {w.index + 1} is {w.state}" if w is not None else "every wave passed"
            raise RolloutRefused(f"rollout {name}: nothing to promote ({where}); a gate is never skipped")
        w.promoted = True
        _event(s, now, f"wave {w.index + 1} promoted{who}: its soak is cut short, its gates still run")
    elif op.verb == "abort":
        moved = s.moved_nodes()
        s.state, s.reason = "aborted", f"aborted{who}"
        s.rollback_pending = list(dict.fromkeys([*s.rollback_pending, *moved]))
        if w is not None and w.state == "baseline":
            w.state = "pending"  # measured nothing that stays: its nodes never moved
        _event(s, now, f"aborted{who}; rolling back {', '.join(moved) or 'no node (none had moved)'}")


def _scores(figures: Mapping[str, Figures]) -> str:
    return ", ".join(f"{n} score {f.score:.2f}" for n, f in sorted(figures.items())) or "no nodes"


def _event(s: RolloutStatus, now: float, message: str) -> None:
    s.events.append(RolloutEvent(ts=round(now, 3), message=message))
    del s.events[: max(0, len(s.events) - MAX_EVENTS)]
