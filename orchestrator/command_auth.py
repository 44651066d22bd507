"""Who may command this site: signed operator commands, checked before a command is queued.

With `EDGEFLEET_REQUIRE_SIGNED_COMMANDS` on, a command runs only when it carries a valid signature
(proto/signing.py `verify_command`) of an operator this site trusts, with a timestamp within
±`COMMAND_WINDOW_S` of this clock and a nonce not seen in that window. Trusted operators come from
the site PKI directory (`EDGEFLEET_OPERATOR_KEYS`): each `operator` identity in `identities.json`
that is not revoked, with its certificate `bundles/<name>/client.crt` (issued by the site CA in
`ca.crt`, of the serial the registry records). The registry is read again when it changes, so a
revocation takes effect at the next command.

Ops whose request is `always_signed` (the API-key commands: their answers hold secrets) are checked
the same way even where unsigned commands are allowed: only an enrolled operator runs them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

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


class OperatorKeys:
    """The operators of a site PKI directory, reread when `identities.json` changes."""

    def __init__(self, pki_dir: Path) -> None:
        self.dir = pki_dir
        self._stamp: tuple[int, int] | None = None
        self._operators: dict[str, Operator] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Operator | None:
        with self._lock:
            self._reload()
            return self._operators.get(name)

    def _reload(self) -> None:
        registry = self.dir / "identities.json"
        try:
            st = registry.stat()
        except OSError:
            if self._operators:
                log.warning("operator registry gone; no operator is trusted", extra={"path": str(registry)})
            self._stamp, self._operators = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(registry.read_text(encoding="utf-8"))
            ca = x509.load_pem_x509_certificate((self.dir / "ca.crt").read_bytes())
            operators = {
                name: self._operator(name, ident, ca)
                for name, ident in dict(data.get("identities", {})).items()
                if ident.get("kind") == "operator"
            }
        except (OSError, ValueError, AttributeError, TypeError) as e:
            log.error("cannot read the operator registry; no operator is trusted", extra={"error": str(e)})
            operators = {}
        self._stamp, self._operators = stamp, operators
        log.info("operator registry loaded", extra={"operators": sorted(operators), "path": str(registry)})

    def _operator(self, name: str, ident: dict[str, object], ca: x509.Certificate) -> Operator:
        revoked = bool(ident.get("revoked"))
        try:
            cert = x509.load_pem_x509_certificate((self.dir / "bundles" / name / "client.crt").read_bytes())
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
        return Operator(name, key, revoked)


class NonceCache:
    """Nonces of accepted signed commands, while their timestamp is within the window; bounded.

    When full, the oldest entry is dropped and its timestamp becomes a floor: a command signed at
    or before the floor is refused as replayed, since it can no longer be told apart from a replay."""

    def __init__(self, window_s: float, max_entries: int = MAX_NONCES) -> None:
        self.window_s, self.max_entries = window_s, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str, signed_at: float, now: float) -> bool:
        """Remember `key`; False when it was seen (or cannot be told from a replay)."""
        while self._seen:
            oldest, ts = next(iter(self._seen.items()))
            if ts >= now - self.window_s:
                break
            del self._seen[oldest]
        if key in self._seen or signed_at <= self._floor:
            return False
        self._seen[key] = signed_at
        while len(self._seen) > self.max_entries:
            _, ts = self._seen.popitem(last=False)
            self._floor = max(self._floor, ts)
        return True


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
    ) -> None:
        self.site, self.operators, self.required = site, operators, required
        self.window_s, self.clock = window_s, clock
        self.nonces = NonceCache(window_s)
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
        with self._lock:
            fresh = self.nonces.add(f"{req.operator}\0{req.nonce}", req.signed_at, now)
        if not fresh:
            raise Refused(ErrorCode.REPLAYED, f"command {cmd.op} from {who} was already received (nonce seen)")
