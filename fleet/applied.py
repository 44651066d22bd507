"""After a desired-state change: which nodes of the target applied the new generation, and which did not.

The orchestrator answers a push with the generation it published; nodes report the generation
they applied per target (`fleet status` data). The CLI waits a few seconds for every node of the
target to report it and prints each node's outcome, so `pushed` is never said of a node that
ignored or refused it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, TextIO

from edgefleet.fleet.control import CommandRefused, OrchestratorSession, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command


def add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the nodes to apply it (default 10)")
    p.add_argument("--no-wait", action="store_true", help="return once the orchestrator published it")


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
        return report_applied(s, target, generation, args.wait, timeout, out)


def nodes_of(target_key: str, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kind, _, name = target_key.partition(":")
    if kind in ("node", "assign"):  # assign:<node>: a node's group assignment
        return [n for n in nodes if n["node_id"] == name]
    return [n for n in nodes if name in n.get("groups", [])]


def _applied(n: dict[str, Any], target_key: str, generation: int) -> bool:
    return int(n.get("generations", {}).get(target_key, 0)) >= generation


def report_applied(
    s: OrchestratorSession, target_key: str, generation: int, wait: float, timeout: float, out: TextIO
) -> int:
    """Wait up to `wait` s for the target's online nodes to report `generation`; print each. 0: all applied."""
    deadline = time.monotonic() + wait
    while True:
        r = s.call(Command(op="status"), timeout)
        nodes = nodes_of(target_key, r.data.get("nodes", []) if r.ok else [])
        pending = [n for n in nodes if n["state"] == "online" and not _applied(n, target_key, generation)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    if not nodes:
        out.write(f"no node of {target_key} has registered yet; each applies generation {generation} when it joins\n")
        return 0
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
