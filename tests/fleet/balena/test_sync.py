"""`edgefleet fleet balena sync`: the real CLI process and the real balena-sdk against a stand-in for
balena's API on 127.0.0.1 (tests/fleet/balena/standin.py), the only part stood in for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fleet.balena.standin import BalenaStandIn, device

TOKEN = "s3cret-balena-api-key-0123456789"
SECRET_VALUE = "hunter2-device-secret"
APP = 4711


def _fleet() -> dict[int, list[dict[str, object]]]:
    return {
        APP: [
            device(
                1,
                "cam-east",
                "raspberrypi4-64",
                {"edgefleet-group": "cameras,line-1"},
                {"EDGEFLEET_PROFILE": "x86-dev", "WIFI_PASSWORD": SECRET_VALUE},
            ),
            device(
                2,
                "orin-1",
                "jetson-orin-nano-devkit-nvme",
                {"edgefleet-group": "vision", "edgefleet-node-id": "orin-a"},
                {
                    "EDGEFLEET_NODE_ID": "orin-a",
                    "EDGEFLEET_PROFILE": "jetson-orin-nano-8gb",
                    "EDGEFLEET_GROUPS": "vision",
                    "EDGEFLEET_MQTT_URL": "mqtt://broker.local:1883",
                },
            ),
            device(3, "untagged", "raspberrypi5"),
            device(4, "odd-board", "beaglebone-black", {"edgefleet-group": "misc"}),
        ]
    }


def _command() -> list[str]:
    """`edgefleet fleet balena` once wired into fleet/site_commands.py, else the same parser as a module."""
    if "balena" in (ROOT / "fleet" / "site_commands.py").read_text():
        return [str(Path(sys.executable).parent / "edgefleet"), "fleet", "balena"]
    return [sys.executable, "-m", "edgefleet.fleet.balena"]


def sync(api: BalenaStandIn, tmp_path: Path, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALENA", "EDGEFLEET_"))}
    env.update(BALENA_API_KEY=token, EDGEFLEET_BALENA_API_URL=api.url, HOME=str(tmp_path))
    cmd = [*_command(), "sync", "--fleet", "acme/site-1", "--device-mqtt-url", "mqtt://broker.local:1883", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert token not in done.stdout + done.stderr, "the token must never be printed"
    assert SECRET_VALUE not in done.stdout + done.stderr, "device variables other than edgefleet's are not shown"
    assert api.unexpected == [], api.unexpected
    return done


@pytest.fixture
def api() -> BalenaStandIn:
    with BalenaStandIn(TOKEN, {"acme/site-1": APP}, _fleet()) as standin:
        yield standin  # type: ignore[misc]


def test_dry_run_prints_the_plan_as_a_diff_and_changes_nothing(api: BalenaStandIn, tmp_path: Path) -> None:
    done = sync(api, tmp_path, "--dry-run")
    out = done.stdout
    assert done.returncode == 1, done.stderr  # two devices were skipped
    assert "cam-east (0000000): raspberrypi4-64, online, balenaOS 6.0.13, release 0123456" in out
    assert "  - EDGEFLEET_PROFILE=x86-dev\n  + EDGEFLEET_PROFILE=rpi4-4gb" in out
    assert "  - EDGEFLEET_NODE_ID (unset)\n  + EDGEFLEET_NODE_ID=cam-east" in out
    assert "  + EDGEFLEET_GROUPS=cameras,line-1" in out and "other variables: WIFI_PASSWORD" in out
    assert "    EDGEFLEET_PROFILE=jetson-orin-nano-8gb" in out  # unchanged: no diff marker
    assert "untagged" in out and "SKIPPED: no edgefleet-group tag" in out
    assert "SKIPPED: unknown device type beaglebone-black" in out
    assert "4 devices: would set 4 variables on 2 devices; 2 skipped" in out
    assert [m for m, _, _ in api.requests] == ["GET", "GET"]  # the fleet, then its devices: nothing written
    assert api.env(1) == {"EDGEFLEET_PROFILE": "x86-dev", "WIFI_PASSWORD": SECRET_VALUE}


def test_sync_writes_device_variables_through_the_sdk(api: BalenaStandIn, tmp_path: Path) -> None:
    done = sync(api, tmp_path)
    assert done.returncode == 1 and "4 devices: set 4 variables on 2 devices; 2 skipped" in done.stdout
    assert api.env(1) == {
        "EDGEFLEET_PROFILE": "rpi4-4gb",
        "WIFI_PASSWORD": SECRET_VALUE,
        "EDGEFLEET_NODE_ID": "cam-east",
        "EDGEFLEET_GROUPS": "cameras,line-1",
        "EDGEFLEET_MQTT_URL": "mqtt://broker.local:1883",
    }
    writes = [(m, p.split("?")[0]) for m, p, _ in api.requests[2:]]
    # An existing variable: POST answered 409 "unique", then PATCH (the SDK's upsert); new ones: POST.
    assert writes.count(("PATCH", "/v7/device_environment_variable")) == 1
    assert writes.count(("POST", "/v7/device_environment_variable")) == 4
    assert "EDGEFLEET_NODE_ID" not in api.env(3) and "EDGEFLEET_NODE_ID" not in api.env(4)
    again = sync(api, tmp_path, "--dry-run")
    assert "would set 0 variables on 2 devices" in again.stdout


def test_a_refused_token_names_balena_api_key(api: BalenaStandIn, tmp_path: Path) -> None:
    done = sync(api, tmp_path, "--dry-run", token="wrong-token-value")
    assert done.returncode == 2
    assert "401" in done.stderr and "BALENA_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_rate_limited_requests_are_retried_with_backoff(api: BalenaStandIn, tmp_path: Path) -> None:
    api.fail_next = [429, 429]
    done = sync(api, tmp_path, "--dry-run")
    assert done.returncode == 1 and "would set 4 variables" in done.stdout, done.stderr
    assert len(api.requests) == 4  # two refused, then the fleet and its devices


def test_an_unknown_fleet_is_named(api: BalenaStandIn, tmp_path: Path) -> None:
    env = {**os.environ, "BALENA_API_KEY": TOKEN, "EDGEFLEET_BALENA_API_URL": api.url, "HOME": str(tmp_path)}
    cmd = [*_command(), "sync", "--fleet", "acme/nowhere", "--device-mqtt-url", "mqtt://b:1883"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "acme/nowhere" in done.stderr and "Traceback" not in done.stderr
