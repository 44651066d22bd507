"""The README's settings tables are checked against the settings models, defaults included.

A settings table follows a marker line `<!-- settings: ModelName -->` and has the columns
`| variable | default | meaning |`. The tables of a model and of its sections (the classes it
extends: the site section documents every part's site, MQTT, TLS and logging settings) must name
every field's environment variable, with the default the model really has: the first `code` span
of the default cell, or a cell starting with "none" or "empty" when it is unset. A part's own table
wins over its sections' tables (a node's broker is unset, everyone else's is the local one).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from edgefleet.fleet.balena.settings import BalenaSettings
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.settings import FleetSettings
from edgefleet.node.settings import NodeSettings
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.plumbing.site_settings import SiteSettings
from tests.conftest import ROOT

PARTS: tuple[type[BaseSettings], ...] = (NodeSettings, OrchestratorSettings, FleetSettings, ConsoleSettings)
SECTIONS: tuple[type[BaseSettings], ...] = (SiteSettings, BalenaSettings)
MODELS = {m.__name__: m for m in (*SECTIONS, *PARTS)}
HEADER = "| variable | default | meaning |"
MARKER = re.compile(r"^<!-- settings: (\w+) -->$")
ENV = re.compile(r"`(EDGEFLEET_[A-Z0-9_]+)`")
# Defaults that depend on the machine the model is built on, as the README states them.
MACHINE_DEFAULTS = {"EDGEFLEET_NODE_ID": "the host name"}


def _tables() -> list[tuple[str, dict[str, str]]]:
    """(model name, {environment variable: default cell}) of every marked table, in README order."""
    lines = (ROOT / "README.md").read_text().splitlines()
    tables = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        assert lines[i + 1].strip() == HEADER, f"README line {i + 2}: a settings table starts with {HEADER}"
        rows: dict[str, str] = {}
        for row in lines[i + 3 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
            names = ENV.findall(cells[0])
            assert names and len(cells) == 3, f"README: a settings row names its variable(s) first: {row}"
            for name in names:
                assert name not in rows, f"README: {name} twice in the {m.group(1)} table"
                rows[name] = cells[1]
        tables.append((m.group(1), rows))
    return tables


def _documented(model: type[BaseSettings]) -> dict[str, str]:
    """Variable → default cell from the tables of `model` and of its sections, its own tables winning."""
    tables = _tables()
    rows: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        for name, table in tables:
            if name == cls.__name__:
                rows.update(table)
    return rows


def _effective_defaults(model: type[BaseSettings], monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """The model as a process gets it with no EDGEFLEET_* variable and no config file."""
    for name in [n for n in os.environ if n.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", os.devnull)
    return model()


def _matches(cell: str, value: object) -> bool:
    if value is None or value == "" or value == []:
        return cell.lower().startswith(("none", "empty"))
    code = re.search(r"`([^`]*)`", cell)
    if code is None:
        return False
    shown = code.group(1)
    if isinstance(value, SecretStr):
        return False  # a secret has no default worth printing
    if isinstance(value, bool):
        return shown == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(shown) == float(value)
        except ValueError:
            return False
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return shown == ("~" + text[len(home) :] if text.startswith(home + os.sep) else text)
    return shown == str(value)


def test_every_settings_model_has_a_table_and_every_table_a_model() -> None:
    named = [name for name, _ in _tables()]
    assert set(named) <= set(MODELS), f"README: tables for unknown models {set(named) - set(MODELS)}"
    assert set(MODELS) <= set(named), f"README: no settings table for {set(MODELS) - set(named)}"


@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_each_table_names_only_settings_its_model_has(model: type[BaseSettings]) -> None:
    fields = {f"EDGEFLEET_{name.upper()}" for name in model.model_fields}
    for name, table in _tables():
        if name == model.__name__:
            unknown = sorted(set(table) - fields)
            assert not unknown, f"README's {name} table documents {unknown}, which {name} does not have"


@pytest.mark.parametrize("model", PARTS + SECTIONS, ids=[m.__name__ for m in PARTS + SECTIONS])
def test_every_setting_is_in_the_tables_with_its_real_default(
    model: type[BaseSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = _documented(model)
    settings = _effective_defaults(model, monkeypatch)
    for name in model.model_fields:
        env = f"EDGEFLEET_{name.upper()}"
        assert env in documented, f"{env} ({model.__name__}) is in no README settings table"
        cell, value = documented[env], getattr(settings, name)
        if env in MACHINE_DEFAULTS:
            assert value == socket.gethostname().split(".")[0] or value == "node"
            assert cell.startswith(MACHINE_DEFAULTS[env]), f"README: {env}'s default is {MACHINE_DEFAULTS[env]}"
            continue
        assert _matches(cell, value), f"README: {env} defaults to {value!r} in {model.__name__}, the table says {cell}"


def test_every_setting_has_a_doc_line_naming_its_environment_variable() -> None:
    for model in MODELS.values():
        for name, field in model.model_fields.items():
            env = f"EDGEFLEET_{name.upper()}"
            assert field.description and env in field.description, f"{env} has no doc line naming it"
