"""A real site for the console's browser tests: Mosquitto, the orchestrator, two nodes, the console,
and Debian's Chromium driven by selenium. One of each per test module (node starts cost seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.orchestrator.api_keys import KeyStore
from tests import site_identity
from tests.conftest import ROOT, NodeProcess, free_port
from tests.mqtt_support import Mosquitto, Orchestrator, node_env

SCREENSHOTS = ROOT / "build" / "screenshots"
PASSWORD = "correct horse battery"


def console_identity() -> dict[str, str]:
    """The console's own operator identity, its certificate also valid for 127.0.0.1 (HTTPS)."""
    site = site_identity.site()
    if not (site.pki.bundle_dir("console") / "client.crt").exists():
        site.pki.issue("console", "operator", hosts=["127.0.0.1"], force=True)
    return site.identity_env(site.pki.bundle_dir("console"))


def console_env(broker: Mosquitto, data_file: Path, front_door: str = "", api_key: str = "") -> dict[str, str]:
    return {
        **os.environ,
        **({"EDGEFLEET_CONSOLE_API_KEY": api_key} if api_key else {}),
        **({} if broker.insecure else console_identity()),
        **({"EDGEFLEET_FRONT_DOOR_ADDRESS": front_door} if front_door else {}),
        "EDGEFLEET_MQTT_URL": broker.url,
        "EDGEFLEET_SITE": "lab",
        "EDGEFLEET_CONSOLE_DATA_FILE": str(data_file),
        "EDGEFLEET_LOG_FORMAT": "text",
    }


def add_operator(env: dict[str, str], name: str, role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.fleet.console", "operator", "add", name, "--role", role, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


class ConsoleProcess:
    def __init__(
        self, tmp: Path, broker: Mosquitto, front_door: str = "", api_key: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"{'http' if broker.insecure else 'https'}://127.0.0.1:{self.port}"
        # the console's certificate must chain to the site CA (checked here, not by the browser)
        self.ssl = site_identity.site().ssl_context(client_cert=False) if not broker.insecure else None
        self.env = {**console_env(broker, tmp / "console.db", front_door, api_key), **(env or {})}
        self.log_path = tmp / "console.log"
        self._log = self.log_path.open("ab")
        for name, role in (("olivia", "operator"), ("victor", "viewer")):
            r = add_operator(self.env, name, role)
            assert r.returncode == 0, r.stderr
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.fleet.console", "--address", f"127.0.0.1:{self.port}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/login", timeout=1, context=self.ssl).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"console did not start:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


@dataclass
class Site:
    broker: Mosquitto
    orchestrator: Orchestrator
    nodes: list[NodeProcess]
    console: ConsoleProcess


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console-site")
    broker = Mosquitto(tmp)
    front_door = f"127.0.0.1:{free_port()}"  # the playground asks through the site's front door
    store = KeyStore(tmp / "api-keys.db")  # the front door's gRPC listener takes API keys
    api_key = store.create("console")[1]
    store.close()
    orch = Orchestrator(tmp, broker, env={"EDGEFLEET_FRONT_DOOR_ADDRESS": front_door})
    nodes = [
        NodeProcess(tmp, env=node_env(broker, EDGEFLEET_GROUPS=g), node_id=f"edge-{i}")
        for i, g in ((1, "line-a"), (2, "line-b"))
    ]
    console = None
    try:
        for n in nodes:
            n.wait_serving()
        console = ConsoleProcess(tmp, broker, front_door, api_key)
        yield Site(broker, orch, nodes, console)
    finally:
        if console is not None:
            console.stop()
        for n in nodes:
            n.stop()
        orch.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1024,1366",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # The console serves HTTPS with a certificate of the test site's CA, which this browser does not
    # know; ConsoleProcess verifies the chain itself with the CA before any browser test runs.
    opts.accept_insecure_certs = True
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    driver.implicitly_wait(0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
