"""`edgefleet fleet rollout start|status|pause|resume|promote|abort`: releases in waves, gated.

    fleet rollout start NAME --target group:G  CHANGE  [waves] [gates] [--eval FILE] [--wait S]
      CHANGE, one section:  --template NAME@VERSION --file F [--system TEXT]
                            --rule FILE | --agent FILE | --tool FILE
                            --model NAME@VERSION --file F.gguf   (uploaded, signed, kept: no target changed)
                            --adapter NAME@VERSION --file F.gguf (a LoRA adapter; uploaded the same way)
                            --knowledge COLLECTION@VERSION --file DIR|BUNDLE (bundled as push-knowledge does)
                            --remove SECTION:NAME (repeatable; alone or with a change of that section)
      waves:  --canary a,b | --canary-count N, --steps 50,100, --soak 30s, --apply-timeout 2m
      gates:  --no-health, --max-errors N, --max-p95-ratio X, --min-tps-ratio X,
              --max-quality-drop X, --min-quality X
    fleet rollout status [NAME] [--json]
    fleet rollout pause|resume|promote|abort NAME

The plan is built from the flags and files and checked whole before anything is sent
(fleet/rollout_plan.py, with the push commands' own file loaders); `--dry-run` prints it.
A refusal exits with the status of its error code (fleet/exit_codes.py); `start --wait` exits 0
when the release succeeded, 1 when it failed or was aborted, 75 when the wait ran out first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from edgefleet.fleet.control import OrchestratorSession, refusal
from edgefleet.fleet.exit_codes import EXIT_FAILED, EXIT_TRY_LATER, exit_code
from edgefleet.fleet.rollout_plan import ReleaseUpload, RolloutCommandError, build_plan
from edgefleet.fleet.rollout_view import summary_row, table, text_lines, view
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, PayloadError
from edgefleet.proto.rollouts import RolloutPlan, RolloutStatus

VERBS = ("rollout",)
__all__ = ["RolloutCommandError", "RolloutRefused", "add_parsers", "run"]
OPERATOR_VERBS = ("pause", "resume", "promote", "abort")


class RolloutRefused(Exception):
    """The orchestrator refused a command: exits with its code's status (fleet/exit_codes.py)."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(refusal(result))
        try:
            self.status = exit_code(ErrorCode(result.code))
        except ValueError:
            self.status = EXIT_FAILED


# -- flags -------------------------------------------------------------------------------------------------
def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = fsub.add_parser("rollout", help="releases in waves with health, service and quality gates")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)
    start = rsub.add_parser("start", help="start a release: a change moved to a target wave by wave, each gated")
    start.add_argument("name", help="the rollout's name (unique on the site)")
    start.add_argument("--target", required=True, help="group:NAME (or node:NAME for one node)")
    change = start.add_argument_group("the change (one section)")
    change.add_argument("--template", metavar="NAME@VERSION", help="a prompt template, from --file")
    change.add_argument("--system", help="the template's system prompt (overrides the file's)")
    change.add_argument("--rule", type=Path, metavar="FILE", help="a sensor rule (YAML or JSON)")
    change.add_argument("--agent", type=Path, metavar="FILE", help="an agent rule (YAML or JSON)")
    change.add_argument("--tool", type=Path, metavar="FILE", help="a site tool (YAML or JSON)")
    change.add_argument("--model", metavar="NAME@VERSION", help="a GGUF base model, from --file (uploaded first)")
    change.add_argument("--adapter", metavar="NAME@VERSION", help="a LoRA adapter (GGUF), from --file (uploaded first)")
    change.add_argument(
        "--knowledge", metavar="COLLECTION@VERSION", help="a knowledge collection, from --file: a folder (or a bundle)"
    )
    change.add_argument("--file", type=Path, help="the file of --template, --model, --adapter or --knowledge")
    change.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="SECTION:NAME",
        help="take an entry away (template:NAME, rule:NAME, agent:NAME, tool:NAME, adapter:NAME, knowledge:NAME, "
        "model); repeatable",
    )
    waves = start.add_argument_group("waves")
    waves.add_argument("--canary", metavar="NODE,NODE", help="the first wave: these nodes")
    waves.add_argument("--canary-count", type=int, metavar="N", help="the first wave: N nodes of the target")
    waves.add_argument("--steps", metavar="P,P", help="then cumulative percentages ending at 100 (default 100)")
    waves.add_argument("--soak", metavar="TIME", help="soak of each wave before its gates: 30s, 2m (default 30s)")
    waves.add_argument("--apply-timeout", metavar="TIME", help="longest wait for a wave's nodes to move (default 2m)")
    gates = start.add_argument_group("gates")
    gates.add_argument("--eval", type=Path, metavar="FILE", help="evaluation set (JSON or YAML): the quality gate")
    gates.add_argument("--no-health", action="store_true", help="no health gate (nodes serving, moved, no errors)")
    gates.add_argument("--max-errors", type=int, metavar="N", help="new error reports a wave may cause (default 0)")
    gates.add_argument("--max-p95-ratio", type=float, metavar="X", help="p95 latency after/before (default 2.0)")
    gates.add_argument("--min-tps-ratio", type=float, metavar="X", help="tokens/s after/before (default 0.5)")
    gates.add_argument("--max-quality-drop", type=float, metavar="X", help="score drop allowed, 0-1 (default 0)")
    gates.add_argument("--min-quality", type=float, metavar="X", help="lowest score after, 0-1 (default 0)")
    start.add_argument("--dry-run", action="store_true", help="print the plan as JSON and send nothing")
    start.add_argument("--wait", type=float, metavar="S", help="follow it up to S seconds; exit 0 only if it succeeds")
    start.add_argument("--json", action="store_true", help="the status as the orchestrator answers it")
    st = rsub.add_parser("status", help="one rollout's waves, gates with figures and nodes; or every rollout")
    st.add_argument("name", nargs="?", default="")
    st.add_argument("--json", action="store_true", help="the status as the orchestrator answers it")
    st.add_argument("--events", type=int, default=20, metavar="N", help="the last N events (default 20)")
    helps = {
        "pause": "stop where it is: no wave starts, no soak ends, no gate is judged",
        "resume": "go on after a pause or a hold",
        "promote": "cut the current wave's soak short (its gates still run)",
        "abort": "stop, and return every node that moved to its previous version",
    }
    for verb in OPERATOR_VERBS:
        p = rsub.add_parser(verb, help=helps[verb])
        p.add_argument("name")
        p.add_argument("--json", action="store_true", help="the status as the orchestrator answers it")


# -- talking to the orchestrator ---------------------------------------------------------------------------
def _call(s: OrchestratorSession, cmd: Command, timeout: float) -> CommandResult:
    result = s.call(cmd, timeout)
    if not result.ok:
        raise RolloutRefused(result)
    return result


def _command(op: str, **fields: Any) -> Command:
    try:
        return Command(op=op, **fields)
    except PayloadError as e:
        raise RolloutCommandError(str(e)) from e


def _upload(s: OrchestratorSession, plan: RolloutPlan, upload: ReleaseUpload, timeout: float, err: TextIO) -> None:
    """The release's file uploaded, and its manifest signed and kept by the orchestrator (`push-model`,
    `push-adapter` or `push-knowledge` with `upload_only`: no target changes); the rollout then moves
    it node by node."""
    from edgefleet.fleet.adapter_commands import bar
    from edgefleet.fleet.uploads import upload as upload_bytes
    from edgefleet.fleet.uploads import upload_file

    ref = upload.ref

    def progress(sent: int, count: int, done: bool) -> None:
        if err.isatty() or done or sent == count:
            err.write(f"\rupload {bar(sent, count)}")

    def send(c: Command) -> CommandResult:
        return s.call(c, timeout)

    if upload.path is not None:
        sha, r = upload_file(send, upload.path, progress)
    else:
        assert upload.data is not None
        sha, r = upload_bytes(send, upload.data, progress)
    err.write("\n")
    if not r.ok:
        raise RolloutRefused(r)
    if sha != ref.sha256:
        raise RolloutCommandError(f"{upload.path} changed while it was read (sha256 {sha} != {ref.sha256}): try again")
    cmd = _command(upload.op, name=ref.name, version=ref.version, sha256=sha, target=plan.target.key, upload_only=True)
    err.write(_call(s, cmd, timeout).message + "\n")


def _status(data: dict[str, Any]) -> RolloutStatus:
    try:
        return RolloutStatus.model_validate(data["rollout"])
    except (KeyError, ValidationError) as e:
        raise RolloutCommandError(f"unreadable rollout status from the orchestrator: {e}") from e


def show(result: CommandResult, args: argparse.Namespace, out: TextIO) -> None:
    if getattr(args, "json", False):
        out.write(json.dumps(result.data, indent=2) + "\n")
        return
    out.write(result.message + "\n")
    if "rollout" in result.data:
        out.writelines(line + "\n" for line in text_lines(view(_status(result.data), events=args.events)))


def follow(s: OrchestratorSession, name: str, wait: float, timeout: float, out: TextIO) -> int:
    """Each new event of rollout `name` as it happens, until it ends (0: succeeded, 1: failed or
    aborted) or `wait` seconds pass (75: it goes on without us)."""
    deadline = time.monotonic() + wait
    seen: set[tuple[float, str]] = set()
    while True:
        st = _status(_call(s, _command("rollout-status", name=name), timeout).data)
        for e in st.events:
            if (e.ts, e.message) not in seen:
                seen.add((e.ts, e.message))
                out.write(f"{time.strftime('%H:%M:%S', time.localtime(e.ts))}  {e.message}\n")
        out.flush()
        if st.terminal:
            out.writelines(line + "\n" for line in text_lines(view(st, events=0)))
            return 0 if st.state == "succeeded" else EXIT_FAILED
        if time.monotonic() > deadline:
            out.write(f"rollout {name} still {st.state} after {wait:.0f} s; `edgefleet fleet rollout status {name}`\n")
            return EXIT_TRY_LATER
        time.sleep(1.0)


def _list(result: CommandResult, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(result.data, indent=2) + "\n")
        return
    rows = [summary_row(d) for d in result.data.get("rollouts", [])]
    lines = table(["NAME", "TARGET", "CHANGE", "STATE", "WHERE", "UPDATED", "REASON"], rows)
    out.writelines(line + "\n" for line in lines or ["(no rollouts)"])


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO, err: TextIO = sys.stderr) -> int:
    timeout = min(args.timeout, 30.0)
    verb = args.rollout_command
    if not hasattr(args, "events"):
        args.events = 20
    if verb == "start":
        plan, upload = build_plan(args, err)  # everything checked before a connection is made
        if args.dry_run:
            out.write(plan.model_dump_json(indent=2) + "\n")
            return 0
    try:
        with OrchestratorSession(settings, min(timeout, 10.0)) as s:
            if verb == "start":
                return start(s, plan, upload, args, timeout, out, err)
            if verb == "status":
                result = _call(s, _command("rollout-status", name=args.name), timeout)
                if args.name:
                    show(result, args, out)
                else:
                    _list(result, args, out)
                return 0
            show(_call(s, _command(f"rollout-{verb}", name=args.name), timeout), args, out)
            return 0
    except RolloutRefused as e:
        err.write(f"edgefleet: {e}\n")
        return e.status


def start(
    s: OrchestratorSession,
    plan: RolloutPlan,
    upload: ReleaseUpload | None,
    args: argparse.Namespace,
    timeout: float,
    out: TextIO,
    err: TextIO,
) -> int:
    if upload is not None:
        _upload(s, plan, upload, timeout, err)
    show(_call(s, _command("rollout-start", plan=plan), timeout), args, out)
    if args.wait is None:
        return 0
    out.flush()
    return follow(s, plan.name, args.wait, timeout, out)
