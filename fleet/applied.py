"""After a desired-state change: which nodes of the target applied the new generation, and which did not.

The orchestrator answers a push with the generation it published; nodes report the generation
they applied per target (`fleet status` data, read page by page where the orchestrator pages it).
The CLI waits a few seconds for every node of the target to report it, so `pushed` is never said
of a node that ignored or refused it. A target of at most `EACH_NODE_MAX` nodes (or `--each`) gets
one line per node; a larger one a progress line (applied / pending / failed / offline counts,
redrawn on a terminal, a new line when the counts change in a log), then the counts and the
stragglers by name (at most `NAMES_MAX` per kind, then `and N more`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from edgefleet.fleet.control import CommandRefused, OrchestratorSession, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command, StatusRequest

EACH_NODE_MAX = 10  # targets of at most this many nodes get one line per node
NAMES_MAX = 20  # stragglers named per kind (pending, failed, offline) before `and N more`
PROGRESS_EVERY_S = 1.0  # in a log (not a terminal): a progress line at most this often, when the counts change


def add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the nodes to apply it (default 10)")
    p.add_argument("--no-wait", action="store_true", help="return once the orchestrator published it")
    p.add_argument(
        "--each",
        action="store_true",
        help=f"one line per node however many (default: per node up to {EACH_NODE_MAX}, then counts and stragglers)",
    )


def add_push_flags(p: argparse.ArgumentParser, force: bool) -> None:
    """--new-group (a bare target that is no node and no known group), --force (a version going back)."""
    p.add_argument("--new-group", action="store_true", help="create the group if no node is in it yet")
    if force:
        p.add_argument("--force", action="store_true", help="accept a version older than the one desired now")
        add_wait_flags(p)


def desired_change(
    settings: FleetSettings,
    args: argparse.Namespace,
    cmd: Command,
    out: TextIO,
    on_refused: Callable[[], None] | None = None,
) -> int:
    """Send a desired-state change, print the orchestrator's answer, then which nodes applied it.
    `on_refused`: undo what was done beforehand (an ACL) when the orchestrator refuses."""
    timeout = min(args.timeout, 30.0)
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        result = s.call(cmd, timeout)
        if not result.ok:
            if on_refused is not None:
                on_refused()
            raise CommandRefused(refusal(result))
        out.write(result.message + "\n")
        out.flush()
        generation, target = result.data.get("generation"), result.data.get("target")
        if args.no_wait or not isinstance(generation, int) or not isinstance(target, str):
            return 0
        return report_applied(s, target, generation, args.wait, timeout, out, getattr(args, "each", False))


def nodes_of(target_key: str, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kind, _, name = target_key.partition(":")
    if kind in ("node", "assign"):  # assign:<node>: a node's group assignment
        return [n for n in nodes if n["node_id"] == name]
    return [n for n in nodes if name in n.get("groups", [])]


def _applied(n: dict[str, Any], target_key: str, generation: int) -> bool:
    return int(n.get("generations", {}).get(target_key, 0)) >= generation


def target_rows(s: OrchestratorSession, target_key: str, timeout: float) -> list[dict[str, Any]]:
    """The status rows of the target's nodes, every page of them: `data.nodes`, then again from
    `data.next_offset` while the answer has one (an orchestrator that does not page answers once).
    Where the status command takes filters, a group's nodes (or those whose id holds the node's
    name) are asked for; `nodes_of` picks the target's exactly either way. A refusal: no rows."""
    fields = StatusRequest.model_fields
    kind, _, name = target_key.partition(":")
    narrow: dict[str, Any] = {}
    if kind == "group" and "group" in fields:
        narrow["group"] = name
    elif kind in ("node", "assign") and "search" in fields:
        narrow["search"] = name
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        r = s.call(Command(op="status", **narrow, **({"offset": offset} if offset else {})), timeout)
        if not r.ok:
            return []
        rows.extend(r.data.get("nodes", []))
        following = r.data.get("next_offset")
        if "offset" not in fields or not isinstance(following, int) or following <= offset:
            return nodes_of(target_key, rows)
        offset = following


@dataclass(frozen=True)
class Tally:
    """Where the target's nodes are with a generation: names per outcome (sorted)."""

    applied: list[str]
    pending: list[str]  # online, not applied yet, no error reported
    failed: list[tuple[str, str]]  # online, not applied, reporting why: (name, the node's errors)
    offline: list[str]  # not online (offline, or its engine failed): applies it when it connects

    @property
    def total(self) -> int:
        return len(self.applied) + len(self.pending) + len(self.failed) + len(self.offline)

    @property
    def missing(self) -> int:
        """Online nodes that did not apply it: what makes the push fail."""
        return len(self.pending) + len(self.failed)


def _errors(n: dict[str, Any]) -> list[str]:
    return [d.removeprefix("error: ") for d in n.get("drift", []) if d.startswith("error: ")]


def tally(nodes: list[dict[str, Any]], target_key: str, generation: int) -> Tally:
    applied, pending, failed, offline = [], [], [], []
    for n in sorted(nodes, key=lambda n: n["node_id"]):
        if _applied(n, target_key, generation):
            applied.append(n["node_id"])
        elif n["state"] != "online":
            offline.append(n["node_id"])
        elif errors := _errors(n):
            failed.append((n["node_id"], "; ".join(errors)))
        else:
            pending.append(n["node_id"])
    return Tally(applied, pending, failed, offline)


def progress_line(t: Tally, generation: int) -> str:
    """`generation 3: 180 applied, 17 pending, 3 failed, 0 offline (of 200)`."""
    return (
        f"generation {generation}: {len(t.applied)} applied, {len(t.pending)} pending, "
        f"{len(t.failed)} failed, {len(t.offline)} offline (of {t.total})"
    )


def named(names: list[str], most: int = NAMES_MAX) -> str:
    """`a, b, c` or, past `most`, the first `most` and `and N more`."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def outcome_lines(t: Tally, target_key: str, generation: int, wait: float) -> list[str]:
    """The end of a wait on a large target: the counts, then the stragglers by name."""
    lines = [f"{len(t.applied)} of {t.total} node(s) of {target_key} applied generation {generation}"]
    if t.pending:
        lines.append(f"  pending, NOT applied within {wait:.0f} s ({len(t.pending)}): {named(t.pending)}")
    if t.failed:
        shown = [f"{name} ({why})" for name, why in t.failed]
        lines.append(f"  failed, NOT applied ({len(t.failed)}): {named(shown)}")
    if t.offline:
        lines.append(f"  offline, applies {generation} when it connects ({len(t.offline)}): {named(t.offline)}")
    if t.missing:
        lines.append(f"{t.missing} of {t.total} node(s) of {target_key} did not apply generation {generation}")
    return lines


class _Progress:
    """The progress line: redrawn in place on a terminal; in a log, a new line when the counts
    changed, at most every PROGRESS_EVERY_S."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty = out, out.isatty()
        self.shown, self.at = "", 0.0

    def show(self, line: str) -> None:
        now = time.monotonic()
        if line == self.shown or (not self.tty and now - self.at < PROGRESS_EVERY_S):
            return
        self.out.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.out.flush()
        self.shown, self.at = line, now

    def close(self) -> None:
        if self.tty and self.shown:
            self.out.write("\n")


def report_applied(
    s: OrchestratorSession,
    target_key: str,
    generation: int,
    wait: float,
    timeout: float,
    out: TextIO,
    each: bool = False,
) -> int:
    """Wait up to `wait` s for the target's online nodes to report `generation`; print each node
    (a small target, or `each`), else progress and the stragglers. 0: all online nodes applied it."""
    deadline = time.monotonic() + wait
    progress = _Progress(out)
    while True:
        nodes = target_rows(s, target_key, timeout)
        pending = [n for n in nodes if n["state"] == "online" and not _applied(n, target_key, generation)]
        if not pending or time.monotonic() >= deadline:
            break
        if len(nodes) > EACH_NODE_MAX and not each:
            progress.show(progress_line(tally(nodes, target_key, generation), generation))
        time.sleep(0.3)
    progress.close()
    if not nodes:
        out.write(f"no node of {target_key} has registered yet; each applies generation {generation} when it joins\n")
        return 0
    if len(nodes) > EACH_NODE_MAX and not each:
        t = tally(nodes, target_key, generation)
        out.write("".join(f"{line}\n" for line in outcome_lines(t, target_key, generation, wait)))
        return 1 if t.missing else 0
    missing = 0
    for n in sorted(nodes, key=lambda n: n["node_id"]):
        have = int(n.get("generations", {}).get(target_key, 0))
        if _applied(n, target_key, generation):
            line = f"applied generation {have}"
        elif n["state"] != "online":
            line = f"{n['state']}: reports generation {have}; applies {generation} when it connects"
        else:
            missing += 1
            errors = [d.removeprefix("error: ") for d in n.get("drift", []) if d.startswith("error: ")]
            line = f"NOT applied within {wait:.0f} s: reports generation {have}, published {generation}"
            if errors:
                line += f" ({'; '.join(errors)})"
        out.write(f"  {n['node_id']:<20} {line}\n")
    if missing:
        out.write(f"{missing} of {len(nodes)} node(s) of {target_key} did not apply generation {generation}\n")
    return 1 if missing else 0
