"""The version contract: what a version string of a template, rule or artifact may look like, and its order.

One pattern for every versioned thing (templates, sensor rules, adapters, knowledge bundles):
1-32 characters, letters, digits, `.`, `_`, `+`, `-`, starting with a letter or digit.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
MAX_VERSION_CHARS = 32
VERSION_RE = re.compile(VERSION_PATTERN)

VERSION_FIELD = Field(min_length=1, max_length=MAX_VERSION_CHARS, pattern=VERSION_PATTERN)
Version = Annotated[str, VERSION_FIELD]
"""A pydantic field type for a version."""


def valid_version(version: object) -> bool:
    return isinstance(version, str) and len(version) <= MAX_VERSION_CHARS and bool(VERSION_RE.match(version))


def check_version(version: object) -> str:
    """The version unchanged, or ValueError saying what a version may be."""
    if not valid_version(version):
        raise ValueError(
            f"version {version!r} is invalid: use 1-{MAX_VERSION_CHARS} letters, digits, '.', '_', '+' or '-', "
            f"starting with a letter or digit"
        )
    assert isinstance(version, str)
    return version


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of versions: `1.10` after `1.9`, `2` after `1.9.9`; numbers sort before words."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[A-Za-z]+", version))


def is_older(version: str, than: str) -> bool:
    return version_key(version) < version_key(than)
