"""Jinja2 older than 3.1.6 has known sandbox escapes, and the templates lean on the sandbox (issue 22).

3.1.5 fixed CVE-2024-56201 (code run through a crafted template file name) and CVE-2024-56326
(`str.format` reached through an indirect reference); 3.1.6 fixed CVE-2025-27516 (`|attr` reaching
`format`). The floor in pyproject.toml must keep them out, and so must what is installed.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR = (3, 1, 6)


def release(text: str) -> tuple[int, ...]:
    """The numeric release of a version string: "3.1.6" -> (3, 1, 6); "3.2.0rc1" -> (3, 2, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    assert match, f"not a version: {text!r}"
    return tuple(int(part) for part in match.group().split("."))


def test_pyproject_requires_jinja2_3_1_6_or_newer() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [d for d in project["dependencies"] if re.match(r"jinja2\b", d, re.I)]
    assert len(lines) == 1, lines
    floor = re.search(r">=\s*([\w.]+)", lines[0])
    assert floor, f"{lines[0]!r} sets no lower bound"
    assert release(floor.group(1)) >= FLOOR, f"{lines[0]!r} admits Jinja2 releases with sandbox escapes"


def test_installed_jinja2_is_3_1_6_or_newer() -> None:
    installed = version("Jinja2")
    assert release(installed) >= FLOOR, f"Jinja2 {installed} is installed; run scripts/setup to get 3.1.6 or newer"
