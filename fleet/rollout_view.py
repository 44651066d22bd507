"""A rollout's status as an operator reads it: waves, gates with their figures, nodes on each version.

Pure: the orchestrator's `rollout-status` answer (proto/rollouts.py `RolloutStatus`, or the summaries
of every rollout) in, rows out. The CLI prints them as text tables (fleet/rollout_commands.py), the
console renders them as HTML (fleet/console/releases_page.py): both read the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.proto.rollouts import ReleaseChange, RolloutStatus, WaveState

# a node whose wave is here carries the release (or is being given it)
ON_RELEASE = ("soaking", "evaluating", "passed")
FIGURE_NAMES = {"score": "score", "p95_ms": "p95 ms", "tokens_per_s": "tok/s", "errors": "errors"}


def change_label(change: ReleaseChange | dict[str, Any]) -> str:
    """`templates triage@2`, `model tiny@3`, `rules -old` (removed): what a release changes."""
    c = change if isinstance(change, ReleaseChange) else ReleaseChange.model_validate(change)
    items = []
    for name, entry in sorted(c.entries.items()):
        version = getattr(entry, "version", "")
        shown = getattr(entry, "name", name) if c.section == "model" else name
        items.append(f"{shown}@{version}" if version else shown)
    items += [f"-{n}" for n in sorted(c.remove)]
    return f"{c.section} {', '.join(items)}"


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    s = max(0.0, (now or time.time()) - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def number(v: float) -> str:
    """A figure short: whole numbers plain, ratios and scores with two decimals, large ones rounded."""
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def figures_text(figures: dict[str, float]) -> str:
    return " ".join(f"{k}={number(v)}" for k, v in sorted(figures.items())) or "-"


@dataclass(frozen=True)
class WaveRow:
    index: int  # 1-based, as shown
    state: str
    nodes: list[str]
    started: str
    finished: str
    current: bool


@dataclass(frozen=True)
class GateRow:
    wave: int  # 1-based
    gate: str
    passed: bool
    figures: str
    message: str


@dataclass(frozen=True)
class FigureRow:
    """One node's evaluation figures before the change and after it, in its wave."""

    wave: int
    node: str
    cells: list[tuple[str, str, str]]  # (figure, before, after)


@dataclass(frozen=True)
class VersionRow:
    version: str
    nodes: list[str]


@dataclass(frozen=True)
class RolloutView:
    name: str
    target: str
    change: str
    state: str
    where: str  # wave 2/3 soaking, or every wave passed
    reason: str
    operator: str
    created: str
    updated: str
    waves: list[WaveRow]
    gates: list[GateRow]
    figures: list[FigureRow]
    versions: list[VersionRow]
    events: list[tuple[str, str]]  # (when, message), newest last
    active: bool  # not finished: the operator's verbs apply


def where(s: RolloutStatus) -> str:
    w = s.wave()
    if w is None:
        return f"all {len(s.waves)} waves passed" + (", completed" if s.completed else "")
    return f"wave {w.index + 1}/{len(s.waves)} {w.state}"


def _node_version(s: RolloutStatus, w: WaveState, node: str, release: str) -> str:
    if s.completed or w.state in ON_RELEASE:
        return f"{release} (release)"
    if w.state == "applying":
        return f"moving to {release}"
    if w.state == "failed" or node in s.rollback_pending:
        return "rolling back to previous"
    return "previous"


def versions(s: RolloutStatus) -> list[VersionRow]:
    """The target's nodes (every wave's) by the version their documents carry: the release, moving to
    it, rolling back, or the previous one; in that order, each group's nodes sorted."""
    release = change_label(s.plan.change)
    groups: dict[str, list[str]] = {}
    for w in s.waves:
        for n in w.nodes:
            groups.setdefault(_node_version(s, w, n, release), []).append(n)
    order = [f"{release} (release)", f"moving to {release}", "rolling back to previous", "previous"]
    return [VersionRow(v, sorted(groups[v])) for v in order if v in groups]


def _figure_rows(w: WaveState) -> list[FigureRow]:
    rows = []
    for node in sorted({*w.baseline, *w.after}):
        before, after = w.baseline.get(node), w.after.get(node)
        cells = []
        for key, label in FIGURE_NAMES.items():
            b = number(getattr(before, key)) if before is not None else "-"
            a = number(getattr(after, key)) if after is not None else "-"
            cells.append((label, b, a))
        rows.append(FigureRow(w.index + 1, node, cells))
    return rows


def view(
    s: RolloutStatus, now: float | None = None, events: int = 20, when: Callable[[float | None], str] | None = None
) -> RolloutView:
    """`when` shows a time (default: how long ago, from `now`)."""
    now = now or time.time()
    at = when or (lambda ts: age(ts, now))
    waves = [
        WaveRow(w.index + 1, w.state, list(w.nodes), at(w.started_at), at(w.finished_at),
                w.index == s.current and not s.terminal)
        for w in s.waves
    ]  # fmt: skip
    gates = [
        GateRow(w.index + 1, v.gate, v.passed, figures_text(v.figures), v.message) for w in s.waves for v in w.verdicts
    ]
    return RolloutView(
        name=s.name,
        target=s.plan.target.key,
        change=change_label(s.plan.change),
        state=s.state,
        where=where(s),
        reason=s.reason,
        operator=s.plan.operator or "-",
        created=at(s.created_at),
        updated=at(s.updated_at),
        waves=waves,
        gates=gates,
        figures=[r for w in s.waves for r in _figure_rows(w)],
        versions=versions(s),
        events=[(at(e.ts), e.message) for e in s.events[-events:]] if events else [],
        active=not s.terminal,
    )


def summary_row(
    d: dict[str, Any], now: float | None = None, when: Callable[[float | None], str] | None = None
) -> list[str]:
    """One rollout of `rollout-status`'s list: name, target, change, state, where, updated, reason."""
    waves = d.get("waves", [])
    current = int(d.get("current", 0))
    at = f"wave {current + 1}/{len(waves)} {d.get('wave_state', '')}" if current < len(waves) else "all waves passed"
    names = ", ".join(d.get("names", []))
    return [
        str(d.get("name", "")),
        str(d.get("target", "")),
        f"{d.get('section', '')} {names}".strip(),
        str(d.get("state", "")),
        at,
        (when or (lambda ts: age(ts, now)))(d.get("updated_at")),
        str(d.get("reason", "")),
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain text columns; the last column is not padded (a long message stays on its line)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        ("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]).rstrip()
        for r in [header, *rows]
    ]


def text_lines(v: RolloutView) -> list[str]:
    """The whole status as `fleet rollout status NAME` prints it."""
    lines = [
        f"rollout {v.name}: {v.state}, {v.where}",
        f"  {v.change} -> {v.target}, started {v.created} by {v.operator}, updated {v.updated}",
    ]
    if v.reason:
        lines.append(f"  reason: {v.reason}")
    lines += ["", "WAVES"]
    wave_rows = [[f"{w.index}{' *' if w.current else ''}", w.state, w.started, w.finished, ", ".join(w.nodes)]
                 for w in v.waves]  # fmt: skip
    lines += table(["WAVE", "STATE", "STARTED", "FINISHED", "NODES"], wave_rows)
    lines += ["", "GATES"]
    gate_rows = [[str(g.wave), g.gate, "pass" if g.passed else "FAIL", g.figures, g.message] for g in v.gates]
    lines += table(["WAVE", "GATE", "RESULT", "FIGURES", "MESSAGE"], gate_rows) or ["  (no gate judged yet)"]
    if v.figures:
        lines += ["", "EVALUATION (before -> after)"]
        header = ["WAVE", "NODE", *[label.upper() for label, _, _ in v.figures[0].cells]]
        rows = [[str(f.wave), f.node, *[f"{b} -> {a}" for _, b, a in f.cells]] for f in v.figures]
        lines += table([*header, ""], [[*r, ""] for r in rows])
    lines += ["", "NODES"]
    lines += table(["VERSION", "NODES"], [[r.version, ", ".join(r.nodes)] for r in v.versions]) or ["  (no nodes)"]
    if v.events:
        lines += ["", "EVENTS"]
        lines += [f"  {when:>8}  {message}" for when, message in v.events]
    return lines
