"""`edgefleet fleet tool …` and `edgefleet fleet agent …`: site tools and agent rules as desired state,
and the agent runs nodes report, with their approvals.

    fleet tool set FILE --target T        a ToolSpec (YAML or JSON) into T's desired state
    fleet tool rm NAME --target T
    fleet tool list [--target T]
    fleet agent set FILE --target T       an AgentRule (YAML or JSON)
    fleet agent rm NAME --target T
    fleet agent list [--target T]
    fleet agent runs [--node N] [--rule R] [--state S]
    fleet agent show RUN_ID
    fleet agent approvals
    fleet agent approve RUN_ID [--node N] [--step I] [--reason TEXT]   (deny: the same)

`approve` / `deny` without `--node` or `--step` take them from the run's pending call.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import BaseModel, ValidationError

from edgefleet.fleet import applied
from edgefleet.fleet.control import OrchestratorSession, refusal, target_listing
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult, PayloadError, describe_validation_error

VERBS = ("tool", "agent")
RUN_STATES = ["running", "waiting", "done", "failed", "stopped"]


class AgentCommandError(Exception):
    """A problem the operator can fix (a bad file, a refused command)."""


def _listing_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"target → name → {what} (with --limit: the page)")
    p.add_argument("--target", default="", help="only this target (GROUP or NODE, or group:NAME / node:NAME)")
    p.add_argument("--limit", type=int, help="one page of at most N targets (with the next page's offset)")
    p.add_argument("--offset", type=int, default=0, help="start at this target (the last page's next offset)")


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tool = fsub.add_parser("tool", help="site tools agents may call (set, rm, list)")
    tsub = tool.add_subparsers(dest="tool_command", required=True)
    agent = fsub.add_parser("agent", help="agent rules, their runs and approvals")
    asub = agent.add_subparsers(dest="agent_command", required=True)
    for sub, noun, a in ((tsub, "tool", "a"), (asub, "agent rule", "an")):
        s = sub.add_parser("set", help=f"push {a} {noun} (YAML or JSON) to a group or a node")
        s.add_argument("file", type=Path)
        s.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
        applied.add_push_flags(s, force=True)
        rm = sub.add_parser("rm", help=f"remove {a} {noun} from a group or a node")
        rm.add_argument("name")
        rm.add_argument("--target", required=True)
        applied.add_wait_flags(rm)
        _listing_flags(sub.add_parser("list", help=f"{noun}s per target"), noun)
    runs = asub.add_parser("runs", help="agent runs, newest first (the latest report of each)")
    runs.add_argument("--node", default="", help="only runs of this node")
    runs.add_argument("--rule", default="", help="only runs of this agent rule")
    runs.add_argument("--state", default="", choices=RUN_STATES, help="only runs in this state")
    runs.add_argument("--limit", type=int, default=20, help="at most N runs (default 20)")
    runs.add_argument("--offset", type=int, default=0, help="start at this run (the last page's next offset)")
    runs.add_argument("--json", action="store_true", help="the page as the orchestrator answers it")
    show = asub.add_parser("show", help="one run with its steps and decisions")
    show.add_argument("run_id")
    show.add_argument("--node", default="", help="the node, when two reported runs of this id")
    show.add_argument("--json", action="store_true")
    ap = asub.add_parser("approvals", help="calls waiting for an operator's approval")
    ap.add_argument("--json", action="store_true")
    for verb in ("approve", "deny"):
        d = asub.add_parser(verb, help=f"{verb} the call a run waits on (signed with the site key, naming you)")
        d.add_argument("run_id")
        d.add_argument("--node", default="", help="the run's node (default: from the run)")
        d.add_argument("--step", type=int, help="the step waiting (default: the run's pending step)")
        d.add_argument("--reason", default="", help="why (kept with the decision)")


def load_spec(path: Path, model: type[ToolSpec] | type[AgentRule]) -> ToolSpec | AgentRule:
    """A tool or agent rule from a YAML or JSON file; a refusal names the field."""
    noun = "tool" if model is ToolSpec else "agent rule"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AgentCommandError(f"cannot read {path}: {e.strerror}") from e
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise AgentCommandError(f"{path} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise AgentCommandError(f"{path} must be a mapping of {noun} fields (name, version, …)")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise AgentCommandError(f"{noun} refused: {describe_validation_error(e)}") from e


def _command(op: str, **fields: Any) -> Command:
    try:
        return Command(op=op, **fields)
    except PayloadError as e:
        raise AgentCommandError(str(e)) from e


def _call(settings: FleetSettings, cmd: Command, timeout: float) -> CommandResult:
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        result = s.call(cmd, timeout)
    if not result.ok:
        raise AgentCommandError(refusal(result))
    return result


def _list(args: argparse.Namespace, settings: FleetSettings, section: str, timeout: float, out: TextIO) -> int:
    cmd = _command(section, target=args.target, offset=args.offset, limit=args.limit)
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        listing = target_listing(
            lambda c: s.call(c, timeout), cmd, args.limit is not None, lambda r: AgentCommandError(refusal(r))
        )
    data, following = listing.targets, listing.next_offset
    if args.json:
        out.write(json.dumps(listing.page if args.limit is not None else data, indent=2) + "\n")
        return 0
    for target, specs in sorted(data.items()):
        for name, spec in sorted(specs.items()):
            if section == "tools":
                b = spec["binding"]
                what = f"{spec['kind']:<4} {b['type']} {b.get('topic') or b.get('collection', '')}"
            else:
                what = f"tools {', '.join(spec['tools'])}; trigger {spec['trigger']['type']}"
            out.write(f"{target:<20} {name}@{spec['version']:<8} {what.rstrip()}\n")
    if not data:
        out.write(f"(no {section})\n")
    if following is not None:
        out.write(f"next page: --offset {following}\n")
    return 0


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def _runs(args: argparse.Namespace, settings: FleetSettings, timeout: float, out: TextIO) -> int:
    cmd = _command("agent-runs", node=args.node, rule=args.rule, state=args.state, offset=args.offset, limit=args.limit)
    data = _call(settings, cmd, timeout).data
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    rows = [["NODE", "RUN", "RULE", "STATE", "STEPS", "STARTED", "REASON"]]
    for r in data.get("runs", []):
        pending = r.get("pending")
        why = r.get("reason", "")
        if r.get("state") == "waiting" and pending:
            why = f"waits for approval of step {pending['step']}: {pending['tool']} {pending['arguments']}"
        rows.append([r["node_id"], r["run_id"], r["rule"], r["state"], str(r["step_count"]), _age(r["started"]), why])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] + "\n")
    shown = len(rows) - 1
    total, following = data.get("total", shown), data.get("next_offset")
    out.write(
        f"{shown} of {total} runs" + (f"; next page: --offset {following}" if following is not None else "") + "\n"
    )
    return 0


def _show(args: argparse.Namespace, settings: FleetSettings, timeout: float, out: TextIO) -> int:
    data = _call(settings, _command("agent-run", run_id=args.run_id, node=args.node), timeout).data
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    run, decisions = data["run"], data.get("decisions", {})
    out.write(f"run {run['run_id']} of {run['rule']}@{run['rule_version']} on {run['node_id']}: {run['state']}")
    out.write(f" ({run['reason']})\n" if run.get("reason") else "\n")
    out.write(f"trigger: {run['trigger']}; started {_age(run['started'])}\n")
    for s in run.get("steps", []):
        if s["kind"] == "model":
            out.write(f"  {s['index']:>2} model  {s['detail'][:200]}\n")
            continue
        line = f"  {s['index']:>2} tool   {s['tool']}({s['arguments']}) -> {s['verdict'] or '?'}"
        if s.get("detail"):
            line += f" ({s['detail']})"
        if s.get("result"):
            line += f": {s['result'][:200]}"
        out.write(line + "\n")
    pending = run.get("pending")
    if run["state"] == "waiting" and pending:
        out.write(
            f"waiting: step {pending['step']} {pending['tool']}({pending['arguments']}), {pending['why']}; "
            f"expires in {max(0.0, pending['expires_at'] - time.time()):.0f} s\n"
        )
    for step, d in sorted(decisions.items()):
        out.write(f"decision: step {step} {'approved' if d['approve'] else 'denied'} by {d['operator']}")
        out.write(f" ({d['reason']})\n" if d.get("reason") else "\n")
    if run.get("answer"):
        out.write(f"answer: {run['answer']}\n")
    return 0


def _approvals(args: argparse.Namespace, settings: FleetSettings, timeout: float, out: TextIO) -> int:
    data = _call(settings, _command("approvals"), timeout).data
    if args.json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    for a in data.get("approvals", []):
        left = max(0.0, a["expires_at"] - time.time())
        out.write(
            f"{a['node_id']}  {a['run_id']}  step {a['step']}  {a['rule']}: {a['tool']}({a['arguments']}) — "
            f"{a['why']}; expires in {left:.0f} s\n"
        )
    if not data.get("approvals"):
        out.write("(no calls wait for approval)\n")
    return 0


def _decide(args: argparse.Namespace, settings: FleetSettings, verb: str, timeout: float, out: TextIO) -> int:
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        node, step = args.node, args.step
        if not node or step is None:
            r = s.call(_command("agent-run", run_id=args.run_id, node=node), timeout)
            if not r.ok:
                raise AgentCommandError(refusal(r))
            run = r.data["run"]
            node = node or run["node_id"]
            if step is None:
                if run.get("state") != "waiting" or not run.get("pending"):
                    raise AgentCommandError(
                        f"run {args.run_id} on {node} is {run.get('state')}, waiting on no call; nothing to {verb}"
                    )
                step = int(run["pending"]["step"])
        result = s.call(_command(verb, node=node, run_id=args.run_id, step=step, reason=args.reason), timeout)
    if not result.ok:
        raise AgentCommandError(refusal(result))
    out.write(result.message + "\n")
    return 0


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    timeout = min(args.timeout, 30.0)
    verb = args.tool_command if args.fleet_command == "tool" else args.agent_command
    section = "tools" if args.fleet_command == "tool" else "agents"
    if verb == "list":
        return _list(args, settings, section, timeout, out)
    if verb == "runs":
        return _runs(args, settings, timeout, out)
    if verb == "show":
        return _show(args, settings, timeout, out)
    if verb == "approvals":
        return _approvals(args, settings, timeout, out)
    if verb in ("approve", "deny"):
        return _decide(args, settings, verb, timeout, out)
    if verb == "rm":
        cmd = _command("rm-tool" if section == "tools" else "rm-agent", name=args.name, target=args.target)
    else:
        spec: BaseModel = load_spec(args.file, ToolSpec if section == "tools" else AgentRule)
        field = "tool" if section == "tools" else "agent"
        op = "set-tool" if section == "tools" else "set-agent"
        cmd = _command(op, target=args.target, force=args.force, new_group=args.new_group, **{field: spec})
    return applied.desired_change(settings, args, cmd, out)
