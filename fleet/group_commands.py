"""`edgefleet fleet assign-groups NODE --groups a,b`: a node's groups at run time, through the orchestrator;
`edgefleet fleet group require-rollouts GROUP on|off`: whether a group takes direct pushes, or only
releases (`edgefleet fleet rollout start`).

On a site with the broker ACL a node reads only its groups' topics. Where the site PKI directory
is (`--dir`, $EDGEFLEET_PKI_DIR, ~/.config/edgefleet/pki) and the node is enrolled there, the
command first records the assigned groups on the node's identity and regenerates the broker files
(then asks the broker to reload, with --broker-pid/--broker-pid-file), so the node may read the
new groups' topics when it subscribes to them. Without the PKI here it says that the ACL must be
updated on the PKI host (the same command there, with --acl-only).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from edgefleet.fleet import applied, identity_commands
from edgefleet.fleet.control import CommandRefused, OrchestratorSession, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.site.pki import PkiError, SitePki
from edgefleet.proto.commands import Command
from edgefleet.proto.topics import check_name

VERBS = ("assign-groups", "group")


class GroupCommandError(Exception):
    """A problem the operator can fix (a bad group name, a refused command)."""


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = fsub.add_parser(
        "assign-groups", help="set the groups the orchestrator assigns to a node (beside its own), no restart"
    )
    p.add_argument("node", help="node id")
    p.add_argument("--groups", required=True, help="comma-separated groups ('' takes every assigned group away)")
    p.add_argument("--dir", type=Path, default=None, help="the site PKI directory, to update the ACL")
    p.add_argument("--acl-only", action="store_true", help="only update the ACL here (the PKI host), send nothing")
    p.add_argument("--broker-pid", type=int, help="send SIGHUP to this Mosquitto process to reload the ACL")
    p.add_argument("--broker-pid-file", type=Path, help="read the Mosquitto pid from this file")
    applied.add_wait_flags(p)
    g = fsub.add_parser("group", help="a group's policy: require rollouts (no direct push to it or its nodes)")
    gsub = g.add_subparsers(dest="group_command", required=True)
    rr = gsub.add_parser(
        "require-rollouts",
        help="on: direct pushes to the group (or its nodes) are refused, changes go out with `fleet rollout start`",
    )
    rr.add_argument("group", help="the group (NAME or group:NAME)")
    rr.add_argument("state", choices=("on", "off"))


def parse_groups(text: str) -> list[str]:
    """`a, b,c` → ['a', 'b', 'c'] (duplicates dropped); ValueError naming an invalid name."""
    groups = list(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    for g in groups:
        check_name("group", g)
    return groups


def _pki(args: argparse.Namespace) -> SitePki:
    return SitePki(args.dir or identity_commands.default_pki_dir())


def update_acl(args: argparse.Namespace, settings: FleetSettings, groups: list[str], out: TextIO) -> list[str] | None:
    """Record `groups` on the node's identity and regenerate the broker files; the groups it had
    before (to put back if the command is refused), or None when there is no PKI here to update."""
    pki = _pki(args)
    if not pki.exists():
        return None
    ident = pki.get(args.node)
    if ident is None or ident.kind != "node" or ident.revoked:
        out.write(f"note: {args.node} is not an enrolled node in {pki.dir}: the broker ACL was not changed\n")
        return None
    try:
        pki.assign_groups(args.node, groups)
        identity_commands.regenerate(pki, settings.topic_root, out)
        identity_commands._reload(args, out)
    except (PkiError, ValueError, identity_commands.IdentityCommandError) as e:
        raise GroupCommandError(f"the broker ACL could not be updated in {pki.dir}: {e}") from e
    return list(ident.assigned_groups)


def group_policy(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    """`group require-rollouts GROUP on|off`: the orchestrator's answer printed; a refusal raised."""
    group = args.group.removeprefix("group:")
    try:
        check_name("group", group)
    except ValueError as e:
        raise GroupCommandError(str(e)) from e
    cmd = Command(op="group-policy", group=group, require_rollouts=args.state == "on")
    timeout = min(args.timeout, 30.0)
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        result = s.call(cmd, timeout)
    if not result.ok:
        raise CommandRefused(refusal(result))
    out.write(result.message + "\n")
    return 0


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    if args.fleet_command == "group":
        return group_policy(args, settings, out)
    try:
        groups = parse_groups(args.groups)
    except ValueError as e:
        raise GroupCommandError(str(e)) from e
    before = update_acl(args, settings, groups, out)
    if args.acl_only:
        if before is None:
            raise GroupCommandError(f"no enrolled node {args.node} in a site PKI here (--dir): nothing to update")
        return 0
    if before is None:
        out.write(
            "note: no site PKI here (--dir): on a site with the broker ACL, update the node's ACL groups on "
            f"the PKI host (`edgefleet fleet assign-groups {args.node} --groups '{','.join(groups)}' --acl-only`)\n"
        )

    def put_back() -> None:  # the ACL follows the orchestrator: the node's groups as they were
        if before is not None:
            _pki(args).assign_groups(args.node, before)
            identity_commands.regenerate(_pki(args), settings.topic_root, out)

    cmd = Command(op="assign-groups", target=args.node, groups=groups)
    return applied.desired_change(settings, args, cmd, out, on_refused=put_back)
