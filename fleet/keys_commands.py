"""`edgefleet fleet keys create | list | revoke`: API keys for the front door, through the orchestrator.

The key database is the orchestrator's alone: these verbs send its `keys-create`, `keys-list` and
`keys-revoke` commands (proto/commands.py), signed with the operator's key like every command;
the orchestrator runs them only for an enrolled operator. `create` prints the key once: it is in
that one answer and nowhere else (the orchestrator keeps only a hash of its secret). A new key reads
no knowledge collection unless `--collections` names some (`*`: all); `--identity` binds its limits
to a site certificate's name. `list` shows usage, never a secret.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edgefleet.fleet.control import OrchestratorSession, refusal
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult, PayloadError

VERBS = ("keys",)
SendCommand = Callable[[Command], CommandResult]


class KeysCommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def _db_flag(p: argparse.ArgumentParser) -> None:
    """`--db`, from when the CLI wrote the keys file itself: refused with what to do instead."""
    p.add_argument("--db", type=Path, default=None, help=argparse.SUPPRESS)


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = fsub.add_parser("keys", help="API keys for the front door (create, list, revoke), through the orchestrator")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it once")
    c.add_argument("name", help="the key's name (who or what uses it)")
    c.add_argument("--models", default="", help="comma-separated models or model:adapter it may use (default: all)")
    c.add_argument("--rpm", type=int, default=0, help="requests per minute (default 0: no limit)")
    c.add_argument("--tpm", type=int, default=0, help="tokens per minute (default 0: no limit)")
    c.add_argument("--expires", default="", help="ISO 8601 time, or Nd for N days from now (default: never)")
    c.add_argument(
        "--collections",
        default="",
        help="comma-separated knowledge collections it may read (Retrieve, chat with a collection), or '*' for all "
        "(default: none, least privilege)",
    )
    c.add_argument(
        "--identity",
        default="",
        help="a site certificate's name (operator or orchestrator CN): its front-door limits and allow-lists "
        "become this key's (default: none)",
    )
    _db_flag(c)
    ls = ksub.add_parser("list", help="the keys with their limits and usage (never a secret)")
    ls.add_argument("--json", action="store_true")
    _db_flag(ls)
    rv = ksub.add_parser("revoke", help="revoke a key (the front door refuses it within a second)")
    rv.add_argument("name")
    _db_flag(rv)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def command(args: argparse.Namespace) -> Command:
    """The orchestrator command of a `keys` verb."""
    try:
        if args.keys_command == "create":
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            collections = [c.strip() for c in args.collections.split(",") if c.strip()]
            return Command(
                op="keys-create", name=args.name, models=models, rpm=args.rpm, tpm=args.tpm, expires=args.expires,
                collections=collections, identity=args.identity.strip(),
            )  # fmt: skip
        if args.keys_command == "revoke":
            return Command(op="keys-revoke", name=args.name)
        return Command(op="keys-list")
    except PayloadError as e:
        raise KeysCommandError(str(e)) from e


def execute(args: argparse.Namespace, send: SendCommand, out: TextIO) -> int:
    """Send the verb's command with `send` and print the answer (a refusal raises KeysCommandError)."""
    r = send(command(args))
    if not r.ok:
        raise KeysCommandError(refusal(r))
    if args.keys_command == "create":
        key = r.data["key"]
        out.write(f"created key {key['name']!r} (id {key['key_id']}); it is shown only this once:\n{r.data['token']}\n")
        return 0
    if args.keys_command == "revoke":
        out.write(r.message + "\n")
        return 0
    keys: list[dict[str, Any]] = r.data.get("keys", [])
    if args.json:
        out.write(json.dumps(keys, indent=2) + "\n")
        return 0
    out.write(f"{'NAME':<20} {'ID':<12} {'STATE':<8} {'MODELS':<24} {'COLLECTIONS':<20} {'IDENTITY':<16} "
              f"{'RPM':>5} {'TPM':>7} {'REQUESTS':>9} {'TOKENS':>9} {'EXPIRES':<20} LAST USED\n")  # fmt: skip
    for k in keys:
        readable = ",".join(k.get("collections", [])) or "-"
        out.write(
            f"{k['name']:<20} {k['key_id']:<12} {k['state']:<8} {','.join(k['models']) or '*':<24} {readable:<20} "
            f"{k.get('identity') or '-':<16} {k['rpm']:>5} {k['tpm']:>7} {k['requests']:>9} {k['tokens']:>9} "
            f"{_when(k['expires_at']):<20} {_when(k['last_used'])}\n"
        )
    return 0


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    if args.db is not None:
        raise KeysCommandError(
            f"--db {args.db}: the keys file is the orchestrator's alone now; `edgefleet fleet keys` asks the "
            "orchestrator of the site (--site, --mqtt-url), which uses its EDGEFLEET_API_KEYS_DB"
        )
    timeout = min(settings.timeout_s, 30.0)
    with OrchestratorSession(settings, min(timeout, 10.0)) as s:
        return execute(args, lambda cmd: s.call(cmd, timeout), out)
