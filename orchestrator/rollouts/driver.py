"""The thread that drives rollouts against the fleet, and the API the rollout commands use.

Each turn, for every unfinished rollout, it shows the machine (machine.py) the current wave's
nodes as the fleet view has them (`Tick`), writes the status the machine returns (store.py), then
runs the actions due, one at a time, feeding each outcome back the same way: the status naming
an action is on disk before the action runs.

How a release moves (node-level overrides; see proto/payloads.py `merged`): applying a wave
publishes each node's own document (`node:<id>`) with the release's entries in; the node's
earlier entries of those names are kept in the status (`previous`) before its document is first
published. A rollback publishes the node's document with them restored. When every wave passed,
the entries go into the target group's document, then each node's override is taken out again
(kept where the node had one of its own before). A node has moved when it reports the generation
published for it.

Publishes, rollbacks and completion run under the driver's lock (they are short), so an operator's
verb never interleaves with them; evaluations run outside it, and their figures are taken only if
the wave still waits for them (a pause or an abort meanwhile leaves them unused).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.desired_edits import PublishDesired
from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.registry import Registry
from edgefleet.orchestrator.rollouts.machine import (
    Action,
    ActionFailed,
    Applied,
    ApplyWave,
    BaselineDone,
    Complete,
    Completed,
    EvaluationDone,
    Observation,
    Operator,
    Restarted,
    Rollback,
    RolledBack,
    RolloutRefused,
    RunBaseline,
    RunEvaluation,
    Tick,
    Verb,
    advance,
    new_status,
)
from edgefleet.orchestrator.rollouts.store import RolloutStore
from edgefleet.orchestrator.rollouts.waves import WaveError, plan_waves
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.evaluation_sets import EvaluationSet, Figures
from edgefleet.proto.payloads import DesiredState, Target
from edgefleet.proto.rollouts import ReleaseChange, RolloutPlan, RolloutStatus

log = logging.getLogger("edgefleet.orchestrator.rollouts")

Evaluate = Callable[[list[str], EvaluationSet], dict[str, Figures]]
MAX_ACTIONS_PER_TURN = 8


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def section_of(doc: DesiredState | None, change: ReleaseChange) -> dict[str, Any]:
    """The changed names as `doc` has them: name → entry (JSON), None where it has none."""
    if change.section == "model":
        return {"model": _dump(doc.model) if doc is not None and doc.model is not None else None}
    entries = getattr(doc, change.section) if doc is not None else {}
    return {n: _dump(entries[n]) if n in entries else None for n in change.names()}


def with_entries(doc: DesiredState | None, change: ReleaseChange, values: dict[str, Any]) -> dict[str, Any]:
    """The changes to `doc` (its section) that make the changed names `values` (None: absent)."""
    if change.section == "model":
        return {"model": values.get("model")}
    entries = {n: _dump(e) for n, e in (getattr(doc, change.section) if doc is not None else {}).items()}
    for name, value in values.items():
        if value is None:
            entries.pop(name, None)
        else:
            entries[name] = value
    return {change.section: entries}


NOUNS = {"templates": "template", "adapters": "adapter", "knowledge": "knowledge", "model": "model"}


def drift_prefixes(change: ReleaseChange) -> tuple[str, ...]:
    """How a node's drift reasons (orchestrator/drift.py) begin while it does not hold the change yet."""
    noun = NOUNS.get(change.section)
    if noun is None:  # rules, agents, tools: held once the generation is applied
        return ()
    if change.section == "model":
        return tuple(f"model {getattr(e, 'name', '')}@" for e in change.entries.values())
    return tuple(f"{noun} {n} " for n in change.entries)


def release_values(change: ReleaseChange) -> dict[str, Any]:
    return {**{n: _dump(e) for n, e in change.entries.items()}, **dict.fromkeys(change.remove)}


class RolloutDriver:
    def __init__(
        self,
        store: RolloutStore,
        registry: Registry,
        view: FleetView,
        publish: PublishDesired,
        evaluate: Evaluate,
        *,
        tick_s: float = 1.0,
        on_published: Callable[[DesiredState], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.registry, self.view = store, registry, view
        self.publish, self.evaluate, self.on_published = publish, evaluate, on_published
        self.tick_s, self.clock = tick_s, clock
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-rollouts", daemon=True)

    @property
    def lock(self) -> threading.RLock:
        """Held while the driver publishes (applies, rolls back, completes) and decides: a direct push
        taken under it never interleaves with a publish of the driver (orchestrator/rollouts/push_guard.py)."""
        return self._lock

    # -- the thread --------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            for s in self.store.all(active_only=True):
                self._save(s, *advance(s, Restarted(), self.clock()))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in self.store.all(active_only=True):
                if self._stop.is_set():
                    return
                try:
                    self.drive(s.name)
                except Exception:
                    log.exception("rollout turn failed", extra={"rollout": s.name})
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def drive(self, name: str) -> None:
        """One turn of rollout `name`: a tick, then the actions due, each outcome fed back."""
        with self._lock:
            s = self.store.get(name)
            if s is None or s.terminal:
                return
            s, actions = self._save(s, *advance(s, self._tick(s), self.clock()))
        for _ in range(MAX_ACTIONS_PER_TURN):
            if not actions or self._stop.is_set():
                return
            obs = self._execute(name, s, actions[0])
            with self._lock:
                current = self.store.get(name)
                if current is None:
                    return
                s, actions = self._save(current, *advance(current, obs, self.clock()))

    def _save(
        self, before: RolloutStatus, after: RolloutStatus, actions: list[Action]
    ) -> tuple[RolloutStatus, list[Action]]:
        """Write `after` (when anything but its time changed), logging its new events."""
        if after.model_dump(exclude={"updated_at"}) != before.model_dump(exclude={"updated_at"}):
            self.store.save(after)
            seen = {(e.ts, e.message) for e in before.events}
            for e in after.events:
                if (e.ts, e.message) not in seen:
                    log.info("rollout: " + e.message, extra={"rollout": after.name, "state": after.state})
        return after, actions

    def _tick(self, s: RolloutStatus) -> Tick:
        w = s.wave()
        if w is None or w.state not in ("applying", "soaking"):
            return Tick()
        snap = self.view.snapshot()
        moved, serving, refused, errors = set(), set(), set(), 0
        since = w.applied_at or w.started_at or s.created_at
        prefixes, names = drift_prefixes(s.plan.change), s.plan.change.names()
        for n in w.nodes:
            node = snap.node(n)
            if node is None:
                continue
            if node.state == "online":
                serving.add(n)
            reached = n in w.generations and node.reported_generations.get(f"node:{n}", 0) >= w.generations[n]
            # moved: on the generation, and holding what it names (an adapter fetched, a model switched)
            if reached and not any(r.startswith(prefixes) for r in node.drift):
                moved.add(n)
            if reached and any(r.startswith("error: ") and any(x in r for x in names) for r in node.drift):
                refused.add(n)
            if node.last_error is not None and node.last_error.ts > since:
                errors += 1
        return Tick(frozenset(moved), frozenset(serving), errors, frozenset(refused))

    # -- actions -----------------------------------------------------------------------------------------------
    def _execute(self, name: str, s: RolloutStatus, action: Action) -> Observation:
        try:
            if isinstance(action, RunBaseline | RunEvaluation):
                assert s.plan.evaluation is not None  # the machine asks for one only then
                figures = self.evaluate(list(action.nodes), s.plan.evaluation)
                return BaselineDone(figures) if isinstance(action, RunBaseline) else EvaluationDone(figures)
            with self._lock:
                if isinstance(action, ApplyWave):
                    return self._apply(name, action.nodes)
                if isinstance(action, Rollback):
                    return self._rollback(name, action.nodes)
                return self._complete(name)
        except Exception as e:
            kind = {RunBaseline: "baseline", RunEvaluation: "evaluation", ApplyWave: "apply", Rollback: "rollback",
                    Complete: "complete"}[type(action)]  # fmt: skip
            log.warning("rollout action failed", extra={"rollout": name, "action": kind, "reason": str(e)[:300]})
            return ActionFailed(kind, f"{type(e).__name__}: {e}"[:500])  # type: ignore[arg-type]

    def _node_doc(self, node: str) -> DesiredState | None:
        return self.registry.desired(f"node:{node}")

    def _publish(self, target: Target, current: DesiredState | None, changes: dict[str, Any]) -> DesiredState:
        doc = self.publish(target, current, changes)
        if self.on_published is not None:
            self.on_published(doc)
        return doc

    def _apply(self, name: str, nodes: list[str]) -> Applied:
        s = self.store.get(name)
        assert s is not None
        change = s.plan.change
        missing = [n for n in nodes if n not in s.previous]
        if missing:  # what each node had, kept before its document first carries the release
            for n in missing:
                s.previous[n] = section_of(self._node_doc(n), change)
            self.store.save(s)
        wanted = release_values(change)
        generations: dict[str, int] = {}
        published: list[str] = []
        for n in nodes:
            doc = self._node_doc(n)
            if doc is not None and section_of(doc, change) == wanted:
                generations[n] = doc.generation  # published before a restart: not again
                continue
            doc = self._publish(Target(kind="node", name=n), doc, with_entries(doc, change, wanted))
            generations[n] = doc.generation
            published.append(n)
        return Applied(generations, published)

    def _rollback(self, name: str, nodes: list[str]) -> RolledBack:
        s = self.store.get(name)
        assert s is not None
        for n in nodes:
            if n not in s.previous:
                continue  # its document never carried the release
            doc = self._node_doc(n)
            if section_of(doc, s.plan.change) != s.previous[n]:
                self._publish(Target(kind="node", name=n), doc, with_entries(doc, s.plan.change, s.previous[n]))
        return RolledBack(list(nodes))

    def _complete(self, name: str) -> Completed:
        s = self.store.get(name)
        assert s is not None
        change, target = s.plan.change, s.plan.target
        if target.kind == "node":
            return Completed()  # the node's own document is the target's: it holds the release already
        wanted = release_values(change)
        group = self.registry.desired(target.key)
        if section_of(group, change) != wanted:
            self._publish(target, group, with_entries(group, change, wanted))
        for n in (n for w in s.waves for n in w.nodes):
            before = s.previous.get(n, {})
            # the override goes where the node had no entry of its own; one it had stays replaced
            drop = {k: None for k in change.entries if before.get(k) is None}
            doc = self._node_doc(n)
            if drop and doc is not None and any(v is not None for k, v in section_of(doc, change).items() if k in drop):
                self._publish(Target(kind="node", name=n), doc, with_entries(doc, change, drop))
        return Completed()

    # -- the API of the rollout commands -----------------------------------------------------------------------
    def target_nodes(self, target: Target) -> list[str]:
        if target.kind == "node":
            if target.name not in self.registry.node_ids():
                raise CommandError(f"no node {target.name} has registered", ErrorCode.NOT_FOUND, field="plan.target")
            return [target.name]
        snap = self.view.snapshot()
        assigned = self.registry.assignments()
        return sorted(
            n.node_id for n in snap.nodes.values()
            if target.name in n.groups or (n.node_id in assigned and target.name in assigned[n.node_id].groups)
        )  # fmt: skip

    def start_rollout(self, plan: RolloutPlan) -> RolloutStatus:
        with self._lock:
            if self.store.get(plan.name) is not None:
                raise CommandError(
                    f"a rollout named {plan.name} exists already: choose another name", field="plan.name"
                )
            nodes = self.target_nodes(plan.target)
            try:
                waves = plan_waves(nodes, plan.waves)
            except WaveError as e:
                raise CommandError(f"{plan.target.key}: {e}", field=f"plan.{e.field}") from e
            self._refuse_conflicts(plan, nodes)
            status = new_status(plan, waves, self.clock())
            self.store.save(status)
        log.info("rollout started", extra={"rollout": plan.name, "target": plan.target.key, "waves": waves})
        self._wake.set()
        return status

    def _refuse_conflicts(self, plan: RolloutPlan, nodes: list[str]) -> None:
        change = plan.change
        if plan.target.kind == "group" and change.remove:
            group = self.registry.desired(plan.target.key)
            held = [n for n, v in section_of(group, change).items() if n in change.remove and v is not None]
            if held:
                raise CommandError(
                    f"{change.section} {', '.join(held)} are in {plan.target.key}'s own document: a node override "
                    "cannot take them away wave by wave; remove them with the rm command",
                    field="plan.change.remove",
                )
        for other in self.store.all(active_only=True):
            shared = sorted({n for w in other.waves for n in w.nodes} & set(nodes))
            if shared or other.plan.target == plan.target:
                raise CommandError(
                    f"rollout {other.name} ({other.state}) is moving {other.plan.target.key} "
                    f"({', '.join(shared[:10]) or 'no node of it yet'}): let it finish, or abort it, first",
                    field="plan.target",
                )

    def get(self, name: str) -> RolloutStatus:
        s = self.store.get(name)
        if s is None:
            known = ", ".join(sorted(self.store.names())[:20]) or "none"
            raise CommandError(f"no rollout named {name} (rollouts: {known})", ErrorCode.NOT_FOUND, field="name")
        return s

    def list(self) -> list[RolloutStatus]:
        return self.store.all()

    def operate(self, name: str, verb: Verb, who: str = "") -> RolloutStatus:
        """pause, resume, promote (skip the rest of the current wave's soak, never a gate) or abort
        (roll back every node that moved); CommandError when the state does not allow it."""
        with self._lock:
            s = self.get(name)
            try:
                s, _ = self._save(s, *advance(s, Operator(verb, who), self.clock()))
            except RolloutRefused as e:
                raise CommandError(str(e), field="name") from e
        self._wake.set()
        return s

    # the contract's names for the verbs (`start_rollout` is its `start`: `start` runs the thread)
    def status(self, name: str) -> RolloutStatus:
        return self.get(name)

    def pause(self, name: str, who: str = "") -> RolloutStatus:
        return self.operate(name, "pause", who)

    def resume(self, name: str, who: str = "") -> RolloutStatus:
        return self.operate(name, "resume", who)

    def promote(self, name: str, who: str = "") -> RolloutStatus:
        return self.operate(name, "promote", who)

    def abort(self, name: str, who: str = "") -> RolloutStatus:
        return self.operate(name, "abort", who)
