"""The README documents every setting (its environment variable) the code reads."""

from __future__ import annotations

from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.settings import FleetSettings
from edgefleet.node.settings import NodeSettings
from edgefleet.orchestrator.settings import OrchestratorSettings
from tests.conftest import ROOT


def test_every_setting_is_documented_with_its_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    for model in (NodeSettings, FleetSettings, OrchestratorSettings, ConsoleSettings):
        for name, field in model.model_fields.items():
            env = f"EDGEFLEET_{name.upper()}"
            assert f"`{env}`" in readme, f"{env} is not documented in README.md"
            assert field.description and env in field.description, f"{env} has no doc line naming it"
