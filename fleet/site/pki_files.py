"""Files of a site PKI directory (fleet/site/pki.py): atomic writes, private or public, and the
move from the earlier layout, where the public files sat at the top of the directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgefleet.plumbing.atomic_files import write_atomic

log = logging.getLogger("edgefleet.pki")

LEGACY_PUBLIC = ("ca.crt", "crl.pem", "identities.json")
"""Files the earlier layout kept at the top of the PKI directory (now in public/)."""


def write_private(path: Path, data: bytes) -> None:
    """Atomically write `data` readable by the owner only (0600 from the first byte)."""
    write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o644)


def refresh(dest: Path, src: Path, private: bool, mirror: bool = False) -> None:
    """Copy `src` to `dest` when it differs; when `src` does not exist, nothing (or, `mirror`,
    remove `dest`)."""
    if not src.exists():
        if mirror:
            dest.unlink(missing_ok=True)
        return
    data = src.read_bytes()
    if not dest.exists() or dest.read_bytes() != data:
        (write_private if private else write_public)(dest, data)


def public_dirs(*dirs: Path) -> None:
    """Create public/ and its certs/: no secrets in them, services read them as any user."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)


def has_legacy_layout(directory: Path) -> bool:
    return (directory / LEGACY_PUBLIC[-1]).exists()


def move_legacy_layout(directory: Path, public: Path) -> None:
    """Move ca.crt, crl.pem and identities.json of the earlier layout into `public`, with a
    relative link left at each old path (a service configured with it keeps reading the live file)."""
    public_dirs(public, public / "certs")
    for name in LEGACY_PUBLIC:
        old = directory / name
        if old.exists() and not old.is_symlink():
            os.replace(old, public / name)
            old.symlink_to(Path(public.name) / name)
    log.warning("PKI directory moved to the public/ layout", extra={"pki_dir": str(directory)})
