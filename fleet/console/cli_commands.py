"""`edgefleet console` and `edgefleet fleet operator add`: the console's command-line entry points.

Wired into fleet/cli.py with `register_console(sub)` (top level) and `register_operator(fsub)`
(under `fleet`); each parser sets `console_handler`, which cli.py calls with the parsed args.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from edgefleet.fleet.console.accounts import ROLES, AccountError, Accounts
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.plumbing.logs import configure_logging


def register_console(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("console", help="serve the fleet management console (web)")
    p.add_argument("--address", help="HOST:PORT to listen on (default 0.0.0.0:8088, EDGEFLEET_CONSOLE_ADDRESS)")
    p.set_defaults(console_handler=run_console)


def register_operator(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = fsub.add_parser("operator", help="console operator accounts")
    osub = p.add_subparsers(dest="operator_command", required=True)
    add = osub.add_parser("add", help="create an account (or set its role and password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    add.set_defaults(console_handler=run_operator)


def run_console(args: argparse.Namespace, out: TextIO = sys.stdout, *, overrides: Mapping[str, Any] = {}) -> int:
    """`overrides`: the `edgefleet` global flags (--mqtt-url, --site, --insecure), over the environment."""
    address = {"console_address": args.address} if getattr(args, "address", None) else {}
    settings = ConsoleSettings(**overrides, **address)
    configure_logging("console", settings.log_level, settings.log_format)
    import logging

    if not settings.may_start(logging.getLogger("edgefleet.console"), "edgefleet console", "the console"):
        return 2
    from edgefleet.fleet.console.server import serve

    serve(settings)
    return 0


def read_password(from_stdin: bool, stdin: TextIO = sys.stdin) -> str:
    if from_stdin:
        return stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise AccountError("the passwords differ")
    return first


def run_operator(args: argparse.Namespace, out: TextIO = sys.stdout, *, overrides: Mapping[str, Any] = {}) -> int:
    settings = ConsoleSettings(**overrides)
    try:
        password = read_password(args.password_stdin)
        created = Accounts(settings.console_data_file).add(args.name, args.role, password)
    except AccountError as e:
        sys.stderr.write(f"edgefleet: {e}\n")
        return 2
    out.write(f"{'created' if created else 'updated'} {args.role} {args.name} in {settings.console_data_file}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone: `python -m edgefleet.fleet.console [--address A]` or `... operator add NAME --role R`."""
    p = argparse.ArgumentParser(prog="python -m edgefleet.fleet.console")
    p.add_argument("--address")
    sub = p.add_subparsers(dest="command")
    register_operator(sub)
    args = p.parse_args(argv)
    if args.command == "operator":
        return int(args.console_handler(args))
    return run_console(args)
