"""Every package folder is in pyproject's package list, so a wheel or image install has all of it.

The editable install finds packages the list misses (node/agents, node/tool_calls and
orchestrator/rollouts were missing once): only this check catches them before a device does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("node", "proto", "plumbing", "orchestrator", "fleet", "firmware_profiles")


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "edgefleet." + ".".join(init.parent.relative_to(ROOT).parts)
        for part in PARTS
        for init in (ROOT / part).rglob("__init__.py")
    }
    assert found - listed == set(), (
        f"package folders missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    )
    assert listed - found == set(), f"pyproject.toml lists packages with no folder: {sorted(listed - found)}"
