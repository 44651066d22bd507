"""`edgefleet fleet balena sync --fleet NAME [--dry-run]`: balena device type and tags → edgefleet settings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, TextIO

from pydantic import ValidationError

from edgefleet.fleet.balena.client import BalenaFleet, BalenaSyncError, make_sdk
from edgefleet.fleet.balena.plan import describe as describe_plan
from edgefleet.fleet.balena.plan import plan_device
from edgefleet.fleet.balena.status_view import join, render
from edgefleet.fleet.control import OrchestratorUnreachable
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.payloads import describe_validation_error


def _profiles() -> set[str]:
    """The shipped firmware profiles (the files edgefleet-node resolves EDGEFLEET_PROFILE against)."""
    return {
        p.name.removesuffix(".toml") for p in files("edgefleet.firmware_profiles").iterdir() if p.name.endswith(".toml")
    }


def register(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = fsub.add_parser("balena", help="balena fleets: write edgefleet settings as device variables")
    bsub = p.add_subparsers(dest="balena_command", required=True)
    sync = bsub.add_parser(
        "sync",
        help="map each device's type and tags to its edgefleet settings and write them (token: BALENA_API_KEY)",
    )
    sync.add_argument("--fleet", required=True, help="the balena fleet: slug (org/name), uuid or id")
    sync.add_argument("--dry-run", action="store_true", help="print the plan (current → wanted); change nothing")
    sync.add_argument(
        "--device-mqtt-url",
        help="the site broker as devices reach it (EDGEFLEET_BALENA_MQTT_URL); tag edgefleet-mqtt-url overrides",
    )
    sync.add_argument(
        "--api-url", help="balena API (EDGEFLEET_BALENA_API_URL, e.g. openBalena); default: balena-sdk's settings"
    )
    sync.add_argument(
        "--assign-groups",
        action="store_true",
        help="groups from the edgefleet-group tag go to the orchestrator (assign-groups: applied without a "
        "restart) instead of the EDGEFLEET_GROUPS device variable (balena restarts the service for a variable)",
    )
    sync.set_defaults(console_handler=run)  # `edgefleet` runs handlers with settings of their own
    status = bsub.add_parser(
        "status",
        help="balena's view beside edgefleet's: each device's online state and its node's (flags disagreements)",
    )
    status.add_argument("--fleet", required=True, help="the balena fleet: slug (org/name), uuid or id")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--api-url", help=argparse.SUPPRESS)
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the orchestrator")
    status.set_defaults(console_handler=run)


def sync(
    settings: FleetSettings,
    fleet: BalenaFleet,
    name: str,
    mqtt_url: str | None,
    dry_run: bool,
    out: TextIO,
    assign: bool = False,
) -> int:
    profiles = _profiles()
    plans = [plan_device(d, profiles, mqtt_url, groups_as_variable=not assign) for d in fleet.devices(name)]
    if not plans:
        out.write(f"fleet {name} has no devices\n")
        return 0
    changed = skipped = 0
    for p in plans:
        for line in describe_plan(p):
            out.write(line + "\n")
        if p.problems:
            skipped += 1
            continue
        for c in p.changes:
            if not dry_run:
                fleet.set_env(p.device, c.name, c.wanted)
            changed += 1
        if assign and p.groups is not None:
            out.write(f"  assign-groups {p.node_id} {','.join(p.groups)}{' (dry run)' if dry_run else ''}\n")
            if not dry_run:
                assign_groups(settings, p.node_id, p.groups, out)
    verb = "would set" if dry_run else "set"
    out.write(
        f"{len(plans)} devices: {verb} {changed} variables on {len(plans) - skipped} devices; "
        f"{skipped} skipped (see SKIPPED)\n"
    )
    return 1 if skipped else 0


def assign_groups(settings: FleetSettings, node_id: str, groups: list[str], out: TextIO) -> None:
    """The tags' groups as the orchestrator's assignment for the node (the CLI's own settings)."""
    from edgefleet.fleet.control import refusal, request
    from edgefleet.proto.commands import Command

    result = request(settings, Command(op="assign-groups", target=node_id, groups=groups), 30.0)
    out.write(f"  {'ok' if result.ok else 'REFUSED'}: {result.message if result.ok else refusal(result)}\n")


def status(settings: FleetSettings, fleet: BalenaFleet, name: str, as_json: bool, timeout: float, out: TextIO) -> int:
    """Devices from balena, nodes from the orchestrator (the CLI's own settings: EDGEFLEET_*)."""
    from edgefleet.fleet.control import OrchestratorSession, pages, refusal
    from edgefleet.proto.commands import Command

    devices = fleet.devices(name)
    nodes: list[dict[str, Any]] = []
    with OrchestratorSession(settings, min(timeout, 10.0)) as session:  # every page of a large site
        for result in pages(lambda c: session.call(c, timeout), Command(op="status")):
            if not result.ok:
                raise BalenaSyncError(refusal(result))
            nodes += result.data.get("nodes", [])
    rows = join(devices, nodes)
    if as_json:
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    else:
        out.writelines(line + "\n" for line in render(rows))
    return 0


def run(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    overrides: Mapping[str, Any] = {},
) -> int:
    """`overrides`: the `edgefleet` global flags (--mqtt-url, --site, --insecure), over the environment."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = FleetSettings(**overrides)
    except ValidationError as e:
        err.write(f"edgefleet: invalid setting: {describe_validation_error(e)}\n")
        return 2
    try:
        fleet = BalenaFleet(make_sdk(args.api_url or settings.balena_api_url))
        if args.balena_command == "status":
            return status(settings, fleet, args.fleet, args.json, args.timeout, out)
        mqtt_url = args.device_mqtt_url or settings.balena_mqtt_url
        return sync(settings, fleet, args.fleet, mqtt_url, args.dry_run, out, args.assign_groups)
    except (BalenaSyncError, OrchestratorUnreachable, ValueError) as e:  # ValueError: settings (no identity, …)
        err.write(f"edgefleet: {e}\n")
        return 2


def main(argv: list[str] | None = None) -> int:
    """`python -m edgefleet.fleet.balena sync …`: the same command outside `edgefleet fleet`."""
    parser = argparse.ArgumentParser(prog="python -m edgefleet.fleet.balena")
    sub = parser.add_subparsers(dest="fleet_command", required=True)
    register(sub)
    args = parser.parse_args(["balena", *(sys.argv[1:] if argv is None else argv)])
    return int(args.console_handler(args))
