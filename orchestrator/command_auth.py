"""Who may command this site: signed operator commands, checked before a command is queued.

With `EDGEFLEET_REQUIRE_SIGNED_COMMANDS` on, a command runs only when it carries a valid signature
(proto/signing.py `verify_command`) of an operator this site trusts, with a timestamp within
±`COMMAND_WINDOW_S` of this clock and a nonce not seen in that window. Trusted operators come from
the public part of the site PKI directory (`EDGEFLEET_OPERATOR_KEYS`: `<pki>/public`, or the PKI
directory itself): each `operator` identity in `identities.json` that is not revoked, with its
certificate `certs/<name>.crt` (issued by the site CA in `ca.crt`, of the serial the registry
records). No private key is read. The registry is read again when it changes, so a revocation
takes effect at the next command.

Ops whose request is `always_signed` (the API-key commands: their answers hold secrets) are checked
the same way even where unsigned commands are allowed: only an enrolled operator runs them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.orchestrator.nonce_store import NonceStore
from edgefleet.proto.access import Kind, Principal, Role, command_role, principal_from_ous
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.signing import COMMAND_WINDOW_S, OperatorPublicKey, SignatureError, verify_command

log = logging.getLogger("edgefleet.orchestrator.command_auth")

MAX_NONCES = 100_000  # signed commands remembered for replay checks (about 10 MB at most)


@dataclass(frozen=True)
class Operator:
    name: str
    key: OperatorPublicKey | None  # None: the identity is in the registry but its certificate is not usable
    revoked: bool
    problem: str = ""
    role: Role = Role.VIEWER  # from its certificate (proto/access.py); the least when it names none


class OperatorKeys:
    """The operators of a site PKI's public/ directory, reread when `identities.json` changes.

    `directory` is public/ itself (what the orchestrator mounts) or the PKI directory above it;
    a PKI directory of the earlier layout (identities.json, ca.crt at its top, certificates in
    bundles/<name>/client.crt) is read as it is."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._stamp: tuple[str, int, int] | None = None
        self._operators: dict[str, Operator] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Operator | None:
        with self._lock:
            self._reload()
            return self._operators.get(name)

    def _layout(self) -> tuple[Path, Callable[[str], Path]]:
        """(the directory holding identities.json and ca.crt, name → that identity's certificate)."""
        public = self.dir / "public"
        if (public / "identities.json").exists():
            return public, lambda name: public / "certs" / f"{name}.crt"
        if (self.dir / "bundles").is_dir() and not (self.dir / "certs").is_dir():  # the earlier layout
            return self.dir, lambda name: self.dir / "bundles" / name / "client.crt"
        return self.dir, lambda name: self.dir / "certs" / f"{name}.crt"

    def _reload(self) -> None:
        base, cert_of = self._layout()
        registry = base / "identities.json"
        try:
            st = registry.stat()
        except OSError:
            if self._operators:
                log.warning("operator registry gone; no operator is trusted", extra={"path": str(registry)})
            self._stamp, self._operators = None, {}
            return
        stamp = (str(registry), st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(registry.read_text(encoding="utf-8"))
            ca = x509.load_pem_x509_certificate((base / "ca.crt").read_bytes())
            operators = {
                name: self._operator(name, ident, ca, cert_of(name))
                for name, ident in dict(data.get("identities", {})).items()
                if ident.get("kind") == "operator"
            }
        except (OSError, ValueError, AttributeError, TypeError) as e:
            log.error("cannot read the operator registry; no operator is trusted", extra={"error": str(e)})
            operators = {}
        self._stamp, self._operators = stamp, operators
        log.info("operator registry loaded", extra={"operators": sorted(operators), "path": str(registry)})

    def _operator(self, name: str, ident: dict[str, object], ca: x509.Certificate, cert_path: Path) -> Operator:
        revoked = bool(ident.get("revoked"))
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError) as e:
            return Operator(name, None, revoked, f"no usable certificate: {e}")
        except Exception as e:  # InvalidSignature: not issued by this site's CA
            return Operator(name, None, revoked, f"certificate not issued by the site CA: {type(e).__name__}")
        if cert.serial_number != ident.get("serial"):
            return Operator(name, None, revoked, "certificate is not the one the registry records (re-enrolled?)")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return Operator(name, None, revoked, "certificate key is not EC")
        ous = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        return Operator(name, key, revoked, role=principal_from_ous(name, ous).role or Role.VIEWER)


class NonceCache:
    """Nonces of accepted signed commands, while their timestamp is within the window; bounded.

    When full, the oldest entry is dropped and its timestamp becomes a floor: a command signed at
    or before the floor is refused as replayed, since it can no longer be told apart from a replay.

    With a `store` (orchestrator/nonce_store.py) every accepted nonce is committed to disk before
    `add` returns, and the cache is refilled from it (floor included) at the first `add`, so a
    restart forgets nothing. A nonce that cannot be written is refused (UNAVAILABLE): fail closed."""

    def __init__(self, window_s: float, max_entries: int = MAX_NONCES, store: NonceStore | None = None) -> None:
        self.window_s, self.max_entries, self.store = window_s, max_entries, store
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._floor = float("-inf")
        self._loaded = store is None

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str, signed_at: float, now: float) -> bool:
        """Remember `key`; False when it was seen (or cannot be told from a replay)."""
        if not self._loaded and self.store is not None:
            for k, ts in self.store.load(since=now - self.window_s):
                self._remember(k, ts)
            self._loaded = True
        while self._seen:
            oldest, ts = next(iter(self._seen.items()))
            if ts >= now - self.window_s:
                break
            del self._seen[oldest]
        if key in self._seen or signed_at <= self._floor:
            return False
        if self.store is not None:
            try:
                if not self.store.record(key, signed_at, prune_before=now - self.window_s):
                    return False
            except sqlite3.Error as e:
                log.error("cannot record a command nonce", extra={"error": str(e), "path": str(self.store.path)})
                raise Refused(
                    ErrorCode.UNAVAILABLE, f"the orchestrator cannot record the command's nonce ({e}); try again"
                ) from e
        self._remember(key, signed_at)
        return True

    def _remember(self, key: str, signed_at: float) -> None:
        self._seen[key] = signed_at
        while len(self._seen) > self.max_entries:
            _, ts = self._seen.popitem(last=False)
            self._floor = max(self._floor, ts)


class Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CommandAuth:
    """Checks each command's envelope; `check` raises Refused, or returns when the command may run."""

    def __init__(
        self,
        site: str,
        operators: OperatorKeys,
        required: bool,
        window_s: float = COMMAND_WINDOW_S,
        clock: Callable[[], float] = time.time,
        nonce_store: NonceStore | None = None,
    ) -> None:
        self.site, self.operators, self.required = site, operators, required
        self.window_s, self.clock = window_s, clock
        self.nonces = NonceCache(window_s, store=nonce_store)
        self._lock = threading.Lock()

    def check(self, cmd: Command) -> None:
        req = cmd.request
        if not self.required and not req.always_signed:
            return
        if not req.signature:
            why = "this site requires signed commands" if self.required else "it is an operator-only command"
            raise Refused(ErrorCode.UNSIGNED, f"command {cmd.op} is not signed; {why}")
        who = f"operator {req.operator!r}"
        op = self.operators.get(req.operator)
        if op is None:
            raise Refused(ErrorCode.UNKNOWN_OPERATOR, f"{who} is not an enrolled operator of site {self.site}")
        if op.revoked:
            raise Refused(ErrorCode.OPERATOR_REVOKED, f"{who} is revoked")
        if op.key is None:
            raise Refused(ErrorCode.UNKNOWN_OPERATOR, f"{who}: {op.problem}")
        try:
            verify_command(cmd, self.site, op.key)
        except SignatureError as e:
            raise Refused(e.code, str(e)) from e
        now = self.clock()
        skew = req.signed_at - now
        if abs(skew) > self.window_s:
            raise Refused(
                ErrorCode.STALE,
                f"command {cmd.op} from {who} was signed {skew:+.0f} s from this orchestrator's clock; "
                f"the limit is ±{self.window_s:.0f} s (check both clocks)",
            )
        needed = command_role(cmd.op)
        who_role = Principal(op.name, Kind.OPERATOR, op.role)
        if not who_role.has_role(needed):
            raise Refused(
                ErrorCode.PERMISSION_DENIED,
                f"{who_role} may not run {cmd.op} on site {self.site}: it needs role {needed.value} or higher",
            )
        with self._lock:
            fresh = self.nonces.add(f"{req.operator}\0{req.nonce}", req.signed_at, now)
        if not fresh:
            raise Refused(ErrorCode.REPLAYED, f"command {cmd.op} from {who} was already received (nonce seen)")
