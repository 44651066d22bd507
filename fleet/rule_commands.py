"""`edgefleet fleet push-rule | rm-rule | rules`: sensor rules as desired state of a group or a node."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

import yaml
from pydantic import ValidationError

from edgefleet.fleet import applied
from edgefleet.fleet.control import OrchestratorSession, refusal, target_listing
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import PayloadError, describe_validation_error
from edgefleet.proto.rules import RuleSpec


class RuleCommandError(Exception):
    """A problem the operator can fix (bad file, refused command)."""


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = fsub.add_parser("push-rule", help="push a sensor rule (YAML or JSON) to a group or a node")
    push.add_argument("file", type=Path)
    push.add_argument("--target", required=True, help="GROUP or NODE (or group:NAME / node:NAME)")
    applied.add_push_flags(push, force=True)
    rm = fsub.add_parser("rm-rule", help="remove a sensor rule from a group or a node")
    rm.add_argument("name")
    rm.add_argument("--target", required=True)
    applied.add_wait_flags(rm)
    ls = fsub.add_parser("rules", help="sensor rules per target")
    ls.add_argument("--json", action="store_true", help="target → rule name → rule (with --limit: the page)")
    ls.add_argument("--target", default="", help="only this target (GROUP or NODE, or group:NAME / node:NAME)")
    ls.add_argument("--limit", type=int, help="one page of at most N targets (with the next page's offset)")
    ls.add_argument("--offset", type=int, default=0, help="start at this target (the last page's next offset)")


def load_rule(path: Path) -> RuleSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RuleCommandError(f"cannot read {path}: {e.strerror}") from e
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise RuleCommandError(f"{path} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise RuleCommandError(f"{path} must be a mapping of rule fields (name, version, topic_filter, template, …)")
    try:
        return RuleSpec.model_validate(data)
    except ValidationError as e:
        raise RuleCommandError(f"rule refused: {describe_validation_error(e)}") from e


def _list(args: argparse.Namespace, settings: FleetSettings, timeout: float, out: TextIO) -> int:
    """`fleet rules`: every page of targets (or the one `--limit` asks for)."""
    try:
        cmd = Command(op="rules", target=args.target, offset=args.offset, limit=args.limit)
    except PayloadError as e:
        raise RuleCommandError(str(e).replace("invalid rules command: ", "fleet rules: --")) from e
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        listing = target_listing(
            lambda c: s.call(c, timeout), cmd, args.limit is not None, lambda r: RuleCommandError(refusal(r))
        )
    data, following = listing.targets, listing.next_offset
    if args.json:
        out.write(json.dumps(listing.page if args.limit is not None else data, indent=2) + "\n")
        return 0
    for target, rules in sorted(data.items()):
        for name, rule in sorted(rules.items()):
            out.write(f"{target:<20} {name}@{rule['version']:<8} {rule['topic_filter']} -> {rule['template']}\n")
    if not data:
        out.write("(no rules)\n")
    if args.limit is not None and following is not None:
        out.write(f"next page: --offset {following}\n")
    return 0


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    timeout = min(args.timeout, 30.0)
    if args.fleet_command == "rules":
        return _list(args, settings, timeout, out)
    if args.fleet_command == "rm-rule":
        cmd = Command(op="rm-rule", name=args.name, target=args.target)
    else:
        cmd = Command(
            op="push-rule", rule=load_rule(args.file), target=args.target, force=args.force, new_group=args.new_group
        )
    return applied.desired_change(settings, args, cmd, out)
