"""Where the front door listens: settings, flags, an empty address, a port that is taken. In process, no nodes."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from pydantic import ValidationError

from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.front_door.server import FrontDoor
from edgefleet.orchestrator.settings import OrchestratorSettings
from tests import site_identity
from tests.conftest import free_port


def test_defaults_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    s = OrchestratorSettings()
    assert (s.front_door_address, s.openai_address, s.metrics_address) == ("0.0.0.0:50050", "0.0.0.0:8080", "")
    monkeypatch.setenv("EDGEFLEET_FRONT_DOOR_ADDRESS", "")
    monkeypatch.setenv("EDGEFLEET_ROUTE_BUFFER_SIZE", "7")
    s = OrchestratorSettings()
    assert s.front_door_address == "" and s.route_buffer_size == 7
    with pytest.raises(ValidationError, match="host:port"):
        OrchestratorSettings(openai_address="8080")
    ours = ("front_door_", "openai_", "metrics_", "route_", "request_")
    for name, field in OrchestratorSettings.model_fields.items():
        if not name.startswith(ours):
            continue
        assert field.description and f"EDGEFLEET_{name.upper()}" in field.description, name


def test_off_when_every_address_is_empty() -> None:
    fd = FrontDoor(OrchestratorSettings(front_door_address="", openai_address="", metrics_address=""), FleetView())
    assert not fd.enabled
    fd.start()
    fd.stop()
    assert fd.ports == {}


def test_a_taken_port_leaves_that_listener_off_and_the_rest_serves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        http, metrics = free_port(), free_port()
        settings = OrchestratorSettings(
            front_door_address=f"127.0.0.1:{busy}",
            openai_address=f"127.0.0.1:{http}",
            metrics_address=f"127.0.0.1:{metrics}",
            registry_db=tmp_path / "r.db",
        )
        fd = FrontDoor(settings, FleetView())
        fd.start()
        try:
            assert "grpc" not in fd.ports and fd.ports["openai"] == http and fd.ports["metrics"] == metrics
            # HTTPS with the site certificate (the harness's, from the environment); the harness
            # certificate is its client credential
            with site_identity.site().urlopen(f"https://127.0.0.1:{http}/v1/models", timeout=5) as r:
                assert json.loads(r.read()) == {"object": "list", "data": []}
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                assert b"edgefleet_fleet_nodes" in r.read()
        finally:
            fd.stop()
