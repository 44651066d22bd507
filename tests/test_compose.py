"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the project."""

from __future__ import annotations

import re

import yaml

from edgefleet.node.profiles import builtin_profiles
from edgefleet.node.settings import NodeSettings
from tests.conftest import ROOT


def test_compose_agrees_with_dockerfile_profiles_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    dockerfile = (ROOT / compose["services"]["node"]["build"]["dockerfile"]).read_text()
    copied = set(re.findall(r"^COPY (\S+)/ ", dockerfile, flags=re.M))
    assert {"node", "proto", "fleet", "orchestrator", "firmware_profiles", "scripts"} <= copied
    node = compose["services"]["node"]
    env = node["environment"]
    assert env["EDGEFLEET_PROFILE"] in builtin_profiles()
    settings_vars = {f"EDGEFLEET_{name.upper()}" for name in NodeSettings.model_fields}
    assert set(env) <= settings_vars, f"unknown settings: {set(env) - settings_vars}"
    port = node["command"][node["command"].index("--port") + 1]
    assert node["ports"] == [f"{port}:{port}"]
    assert f"EXPOSE {port}" in dockerfile
    volume = env["EDGEFLEET_DATA_DIR"]
    assert any(v.endswith(f":{volume}") for v in node["volumes"])
