"""Signed desired state: the canonical form, key ids, and verification against pinned site keys.

The orchestrator signs every desired-state document with the site's Ed25519 key (the key that
signs artifact manifests, see `artifacts.py`). The signature is detached: an Ed25519 signature
over `canonical(doc)` — the document as JSON without its `signature` field, keys sorted, no
whitespace — in the document's `signature` field (base64), with `key_id`, the signing key's
fingerprint, so a receiver that trusts several keys (a key rotation) knows which one to try.
`key_id` is itself signed. A receiver verifies the parsed document, never the bytes it got.
Group assignments and operators' approval decisions (proto/agents.py `ApprovalDecision`) are
signed the same way, each behind a domain tag of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.proto.agent_runs import ApprovalDecision
from edgefleet.proto.artifacts import ArtifactError
from edgefleet.proto.commands import Command, CommandRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import DesiredState, GroupAssignment

_PEM_BEGIN = b"-----BEGIN PUBLIC KEY-----"


class SignatureError(ValueError):
    """A desired-state document that does not carry a trusted signature; `code` says which way."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


SiteSigned = DesiredState | GroupAssignment | ApprovalDecision
"""The documents the orchestrator signs with the site key."""


def canonical(doc: SiteSigned) -> bytes:
    """The signed bytes: every field but `signature`, as compact JSON with sorted keys (a group
    assignment's and an approval decision's behind a tag of their own: neither signature is ever
    one of a desired state, nor of each other)."""
    data = doc.model_dump(mode="json", exclude={"signature"})
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if isinstance(doc, GroupAssignment):
        return _ASSIGNMENT_TAG + body
    if isinstance(doc, ApprovalDecision):
        return _DECISION_TAG + body
    return body


_ASSIGNMENT_TAG = b"edgefleet-assignment/1\n"
_DECISION_TAG = b"edgefleet-approval/1\n"


def key_id(key: Ed25519PublicKey) -> str:
    """A public key's fingerprint: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_desired(doc: DesiredState, private: Ed25519PrivateKey) -> DesiredState:
    """`doc` signed: `key_id` set to the key's fingerprint, `signature` over the canonical form."""
    unsigned = doc.model_copy(update={"key_id": key_id(private.public_key()), "signature": ""})
    sig = private.sign(canonical(unsigned))
    return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def sign_assignment(doc: GroupAssignment, private: Ed25519PrivateKey) -> GroupAssignment:
    """A group assignment signed with the site key, the way `sign_desired` signs desired state."""
    unsigned = doc.model_copy(update={"key_id": key_id(private.public_key()), "signature": ""})
    sig = private.sign(canonical(unsigned))
    return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


def sign_decision(doc: ApprovalDecision, private: Ed25519PrivateKey) -> ApprovalDecision:
    """An operator's approval decision signed with the site key, the way `sign_desired` signs desired state."""
    unsigned = doc.model_copy(update={"key_id": key_id(private.public_key()), "signature": ""})
    sig = private.sign(canonical(unsigned))
    return unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()})


class KeyRing:
    """The public keys a receiver trusts (several during a rotation), by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self.keys: dict[str, Ed25519PublicKey] = {key_id(k): k for k in keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def ids(self) -> list[str]:
        return sorted(self.keys)

    def verify(self, doc: SiteSigned) -> None:
        """Raise SignatureError (UNSIGNED or BAD_SIGNATURE) unless a trusted key signed `doc` as it is."""
        if isinstance(doc, GroupAssignment):
            label = f"group assignment of {doc.node_id} generation {doc.generation}"
        elif isinstance(doc, ApprovalDecision):
            label = f"approval decision for {doc.node_id} run {doc.run_id} step {doc.step}"
        else:
            label = f"desired state {doc.target.key} generation {doc.generation}"
        if not doc.signature:
            raise SignatureError(ErrorCode.UNSIGNED, f"{label} is not signed; this node pins the site's key")
        key = self.keys.get(doc.key_id)
        if key is None:
            raise SignatureError(
                ErrorCode.BAD_SIGNATURE,
                f"{label} is signed by key {doc.key_id[:16]!r}, not one this site trusts ({', '.join(self.ids)})",
            )
        try:
            key.verify(base64.b64decode(doc.signature, validate=True), canonical(doc))
        except (InvalidSignature, ValueError) as e:
            raise SignatureError(
                ErrorCode.BAD_SIGNATURE, f"{label}: the signature does not verify with key {doc.key_id} (altered)"
            ) from e


def parse_public_keys(data: bytes, origin: str = "key") -> list[Ed25519PublicKey]:
    """Every PEM public key in `data` (one or several blocks, e.g. a rotation's old and new key)."""
    blocks = [_PEM_BEGIN + part for part in data.split(_PEM_BEGIN)[1:]]
    if not blocks:
        raise ArtifactError(f"{origin} holds no PEM public key")
    keys = []
    for block in blocks:
        key = serialization.load_pem_public_key(block.strip() + b"\n")
        if not isinstance(key, Ed25519PublicKey):
            raise ArtifactError(f"{origin} holds a public key that is not Ed25519")
        keys.append(key)
    return keys


def load_public_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    """The keys in each file (each may hold several PEM blocks), in order, duplicates dropped."""
    out: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        for key in parse_public_keys(path.read_bytes(), str(path)):
            out.setdefault(key_id(key), key)
    return list(out.values())


# -- operator commands ---------------------------------------------------------------------------
# An operator signs each command with its enrolled EC P-256 key (the bundle's `client.key`, ECDSA
# with SHA-256) or an Ed25519 key. The signed bytes are a domain tag, the site, and the command in
# the canonical form (every field but `signature`, so operator, key id, time and nonce are signed):
# a command signature is never a valid desired-state signature, nor valid at another site.

COMMAND_WINDOW_S = 120  # a signed command's `signed_at` may be this far from the receiver's clock
_COMMAND_TAG = b"edgefleet-command/1\n"

OperatorPrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey
OperatorPublicKey = ec.EllipticCurvePublicKey | Ed25519PublicKey


def public_key_id(key: OperatorPublicKey) -> str:
    """`key_id` for an Ed25519 key; for an EC key, the first 16 hex digits of the sha256 of its DER."""
    if isinstance(key, Ed25519PublicKey):
        return key_id(key)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


COMMAND_ENVELOPE = ("operator", "key_id", "signed_at", "nonce", "signature")  # the signature's own fields


def without_envelope(cmd: Command, verified: bool = False) -> Command:
    """`cmd` as its op sees it: the signed envelope back at its defaults (checked, and no argument).

    An op that records who decided (`names_operator`: approve, deny) keeps `operator` when the
    receiver `verified` its signature; otherwise it too goes back to "" (an unsigned claim names no one)."""
    fields = CommandRequest.model_fields
    update = {f: fields[f].get_default() for f in COMMAND_ENVELOPE}
    if verified and cmd.request.names_operator:
        del update["operator"]
    return Command(cmd.request.model_copy(update=update))


def command_bytes(cmd: Command, site: str) -> bytes:
    """What an operator signs: the tag, the site, and the canonical command (without `signature`)."""
    data = cmd.request.model_dump(mode="json", exclude={"signature"})
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return _COMMAND_TAG + site.encode() + b"\n" + body


def sign_command(
    cmd: Command, site: str, operator: str, private: OperatorPrivateKey, now: float | None = None
) -> Command:
    """`cmd` with its envelope: operator, key id, time, a fresh nonce, and the signature."""
    unsigned = cmd.request.model_copy(
        update={
            "operator": operator,
            "key_id": public_key_id(private.public_key()),
            "signed_at": int(time.time() if now is None else now),
            "nonce": secrets.token_hex(16),
            "signature": "",
        }
    )
    data = command_bytes(Command(unsigned), site)
    if isinstance(private, Ed25519PrivateKey):
        sig = private.sign(data)
    else:
        sig = private.sign(data, ec.ECDSA(hashes.SHA256()))
    return Command(unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()}))


def verify_command(cmd: Command, site: str, public: OperatorPublicKey) -> None:
    """Raise SignatureError (UNSIGNED or BAD_SIGNATURE) unless `public` signed `cmd` for `site` as it is.

    Who the operator is, whether they are trusted, and freshness are the receiver's to check."""
    req = cmd.request
    label = f"command {cmd.op} from operator {req.operator!r}"
    if not req.signature:
        raise SignatureError(ErrorCode.UNSIGNED, f"command {cmd.op} is not signed; this site requires signed commands")
    want = public_key_id(public)
    if req.key_id != want:
        raise SignatureError(
            ErrorCode.BAD_SIGNATURE, f"{label} names key {req.key_id[:16]!r}; the operator's key is {want}"
        )
    try:
        sig = base64.b64decode(req.signature, validate=True)
        if isinstance(public, Ed25519PublicKey):
            public.verify(sig, command_bytes(cmd, site))
        else:
            public.verify(sig, command_bytes(cmd, site), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as e:
        raise SignatureError(
            ErrorCode.BAD_SIGNATURE, f"{label}: the signature does not verify (forged or altered)"
        ) from e


def load_operator_key(path: Path) -> OperatorPrivateKey:
    """An operator's private key from a PEM file (the enrolled bundle's `client.key`, or Ed25519)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, Ed25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise ArtifactError(f"{path} holds a key that is neither EC P-256 nor Ed25519")
