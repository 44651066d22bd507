"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the project."""

from __future__ import annotations

import re

import yaml

from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.node.profiles import builtin_profiles
from edgefleet.node.settings import NodeSettings
from edgefleet.orchestrator.settings import OrchestratorSettings
from tests.conftest import ROOT


def _vars(model: type) -> set[str]:
    return {f"EDGEFLEET_{name.upper()}" for name in model.model_fields}  # type: ignore[attr-defined]


def test_compose_agrees_with_dockerfile_profiles_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    dockerfile = (ROOT / services["orchestrator"]["build"]["dockerfile"]).read_text()
    copied = set(re.findall(r"^COPY (\S+)/ ", dockerfile, flags=re.M))
    assert {"node", "proto", "fleet", "orchestrator", "firmware_profiles", "scripts"} <= copied
    assert services["node"]["image"] == services["orchestrator"]["image"]

    node, orch = services["node"], services["orchestrator"]
    assert node["environment"]["EDGEFLEET_PROFILE"] in builtin_profiles()
    assert set(node["environment"]) <= _vars(NodeSettings), set(node["environment"]) - _vars(NodeSettings)
    assert set(orch["environment"]) <= _vars(OrchestratorSettings)
    console = services["console"]
    assert console["image"] == services["orchestrator"]["image"] and console["command"][:2] == ["edgefleet", "console"]
    assert set(console["environment"]) <= _vars(ConsoleSettings) | {"EDGEFLEET_LOG_FORMAT"}
    assert console["environment"]["EDGEFLEET_FRONT_DOOR_ADDRESS"].endswith(
        orch["environment"]["EDGEFLEET_FRONT_DOOR_ADDRESS"].rsplit(":", 1)[1]
    )
    port = node["command"][node["command"].index("--port") + 1]
    assert node["ports"] == [f"{port}:{port}"] and f"EXPOSE {port}" in dockerfile
    assert any(v.endswith(f":{node['environment']['EDGEFLEET_DATA_DIR']}") for v in node["volumes"])

    # Both parts reach the broker service by name, on the port its config listens on, in one site.
    broker_port = re.search(r"^listener (\d+)", (ROOT / "deploy/mosquitto.conf").read_text(), re.M)
    assert broker_port is not None
    for part in (node, orch):
        assert part["environment"]["EDGEFLEET_MQTT_URL"] == f"mqtt://mosquitto:{broker_port.group(1)}"
        assert "mosquitto" in part["depends_on"]
    assert node["environment"]["EDGEFLEET_SITE"] == orch["environment"]["EDGEFLEET_SITE"]
    conf_mount = services["mosquitto"]["volumes"][0].split(":")[0]
    assert (ROOT / conf_mount).exists()
