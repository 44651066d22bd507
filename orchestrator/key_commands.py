"""The front door's API keys as operator commands: keys-create, keys-list, keys-revoke.

The key database (`EDGEFLEET_API_KEYS_DB`, else api-keys.db beside the registry) is the
orchestrator's alone: the CLI (`edgefleet fleet keys`) is a client of these commands like any
other. The ops are `always_signed` (proto/commands.py): only an enrolled operator's signed command
runs them, on every site. A created key's token is in that one answer and nowhere else: only the
hash of its secret is stored, and neither the token nor the secret is logged. The front door reads
the same file (`Verifier`), so a revoked key is refused within a second.

The file is opened at the first key command, so a site that never uses keys gets no file.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edgefleet.orchestrator.api_keys import ApiKey, ApiKeyError, KeyStore, parse_expires
from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.proto.commands import KeysCreateRequest, KeysListRequest, KeysRevokeRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult

log = logging.getLogger("edgefleet.orchestrator.keys")


def key_state(key: ApiKey, now: float) -> str:
    return "revoked" if key.revoked else "expired" if key.expired(now) else "active"


class KeyCommands:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._store: KeyStore | None = None
        self._lock = threading.Lock()

    def register(self, table: CommandTable) -> None:
        table.register(KeysCreateRequest, self.create)
        table.register(KeysListRequest, self.list_keys)
        table.register(KeysRevokeRequest, self.revoke)

    def _keys(self) -> KeyStore:
        with self._lock:
            if self._store is None:
                self._store = KeyStore(self.db_path)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def create(self, req: KeysCreateRequest) -> CommandResult:
        try:
            expires_at = parse_expires(req.expires)
            key, token = self._keys().create(
                req.name, req.models, req.rpm, req.tpm, expires_at, req.collections, req.identity
            )
        except ApiKeyError as e:
            raise CommandError(str(e)) from e
        log.info(
            "API key created",
            extra={
                "key": key.name,
                "key_id": key.key_id,
                "collections": list(key.collections),
                "identity": key.identity,
            },
        )
        return CommandResult(
            ok=True,
            message=f"created key {key.name!r} (id {key.key_id}); it is shown only this once",
            data={"key": key.public(), "token": token},
        )

    def list_keys(self, _: KeysListRequest) -> CommandResult:
        now = time.time()
        keys = [{**k.public(), "state": key_state(k, now)} for k in self._keys().all_keys()]
        return CommandResult(ok=True, data={"keys": keys})

    def revoke(self, req: KeysRevokeRequest) -> CommandResult:
        store = self._keys()
        if not any(k.name == req.name for k in store.all_keys()):
            raise CommandError(f"no key named {req.name!r}", ErrorCode.NOT_FOUND, field="name")
        try:
            key = store.revoke(req.name)
        except ApiKeyError as e:  # gone in between (another writer of the file)
            raise CommandError(str(e), ErrorCode.NOT_FOUND, field="name") from e
        log.info("API key revoked", extra={"key": key.name, "key_id": key.key_id})
        return CommandResult(ok=True, message=f"revoked key {key.name!r} (id {key.key_id})", data={"key": key.public()})
