"""Whether an artifact manifest that arrived may be taken (artifact_sync.py reads it on the network thread).

In this order: the payload is within the size limit and a well-formed `Manifest`; it names the kind
and the artifact of the topic it came on; a site public key is pinned and signed it; it is not older
than the version installed (a replayed manifest). A refusal carries its error code and a message
for the errors topic; the node keeps what it had.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.proto.artifacts import ArtifactError, Manifest, verify
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import MAX_PAYLOAD_BYTES, describe_validation_error
from edgefleet.proto.topics import ManifestTopic
from edgefleet.proto.versions import is_older


class ManifestRefused(Exception):
    """A manifest not taken: `code` for the errors topic, the message says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_manifest(
    topic: str,
    payload: bytes | bytearray,
    where: ManifestTopic,
    site_key: Ed25519PublicKey | None,
    installed_version: Callable[[str], str | None],
) -> Manifest:
    """The verified manifest on `topic` (parsed as `where`), or ManifestRefused.

    `installed_version(name)` is the version of that artifact installed here (None: none is)."""
    try:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ArtifactError(f"manifest is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        m = Manifest.model_validate_json(payload)
    except ValidationError as e:
        raise ManifestRefused(ErrorCode.MANIFEST_REFUSED, f"manifest refused: {describe_validation_error(e)}") from e
    except ArtifactError as e:
        raise ManifestRefused(ErrorCode.MANIFEST_REFUSED, str(e)) from e
    if (where.kind, where.name) != (m.kind, m.name):
        raise ManifestRefused(ErrorCode.MANIFEST_REFUSED, f"manifest of {m.label} arrived on {topic}")
    if site_key is None:
        raise ManifestRefused(
            ErrorCode.NO_SITE_KEY, f"{m.label} refused: no site public key pinned (EDGEFLEET_SITE_PUBLIC_KEY)"
        )
    try:
        verify(m, site_key)
    except ArtifactError as e:
        raise ManifestRefused(ErrorCode.BAD_SIGNATURE, str(e)) from e
    current = installed_version(m.name)
    if current is not None and is_older(m.version, current):
        raise ManifestRefused(
            ErrorCode.OLDER_VERSION,
            f"{m.label} refused: older than the installed version {current} (a replayed manifest?)",
        )
    return m
