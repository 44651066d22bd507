"""`edgefleet fleet keys create | list | revoke`: API keys for the front door (run on the orchestrator host).

These verbs work on the keys file only (`--db`, else EDGEFLEET_API_KEYS_DB, else api-keys.db
beside the registry, EDGEFLEET_REGISTRY_DB). `create` prints the key once; it is never stored
nor shown again (only a hash of its secret is kept). `list` shows usage, never a secret.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from edgefleet.plumbing.api_keys import ApiKey, ApiKeyError, KeyStore, default_db_path, parse_expires

VERBS = ("keys",)
DB_ENV = "EDGEFLEET_API_KEYS_DB"


class KeysCommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def default_db() -> Path:
    explicit = os.environ.get(DB_ENV)
    if explicit:
        return Path(explicit).expanduser()
    registry = os.environ.get("EDGEFLEET_REGISTRY_DB")
    return Path(registry).expanduser().parent / "api-keys.db" if registry else default_db_path()


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=None, help=f"the keys file (${DB_ENV}; api-keys.db beside the registry)")


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = fsub.add_parser("keys", help="API keys for the front door (create, list, revoke)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it once")
    c.add_argument("name", help="the key's name (who or what uses it)")
    c.add_argument("--models", default="", help="comma-separated models or model:adapter it may use (default: all)")
    c.add_argument("--rpm", type=int, default=0, help="requests per minute (default 0: no limit)")
    c.add_argument("--tpm", type=int, default=0, help="tokens per minute (default 0: no limit)")
    c.add_argument("--expires", default="", help="ISO 8601 time, or Nd for N days from now (default: never)")
    _db_flag(c)
    ls = ksub.add_parser("list", help="the keys with their limits and usage (never a secret)")
    ls.add_argument("--json", action="store_true")
    _db_flag(ls)
    rv = ksub.add_parser("revoke", help="revoke a key (the front door refuses it within a second)")
    rv.add_argument("name")
    _db_flag(rv)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def _state(k: ApiKey, now: float) -> str:
    return "revoked" if k.revoked else "expired" if k.expired(now) else "active"


def run(args: argparse.Namespace, out: TextIO) -> int:
    store = KeyStore(args.db or default_db())
    try:
        if args.keys_command == "create":
            models = [m for m in args.models.split(",") if m.strip()]
            key, token = store.create(args.name, models, args.rpm, args.tpm, parse_expires(args.expires))
            out.write(f"created key {key.name!r} (id {key.key_id}); it is shown only this once:\n{token}\n")
            return 0
        if args.keys_command == "revoke":
            key = store.revoke(args.name)
            out.write(f"revoked key {key.name!r} (id {key.key_id})\n")
            return 0
        now = time.time()
        keys = store.all_keys()
        if args.json:
            out.write(json.dumps([{**k.public(), "state": _state(k, now)} for k in keys], indent=2) + "\n")
            return 0
        out.write(f"{'NAME':<20} {'ID':<12} {'STATE':<8} {'MODELS':<24} {'RPM':>5} {'TPM':>7} "
                  f"{'REQUESTS':>9} {'TOKENS':>9} {'EXPIRES':<20} LAST USED\n")  # fmt: skip
        for k in keys:
            out.write(
                f"{k.name:<20} {k.key_id:<12} {_state(k, now):<8} {','.join(k.models) or '*':<24} {k.rpm:>5} "
                f"{k.tpm:>7} {k.requests:>9} {k.tokens:>9} {_when(k.expires_at):<20} {_when(k.last_used)}\n"
            )
        return 0
    except ApiKeyError as e:
        raise KeysCommandError(str(e)) from e
    finally:
        store.close()
