"""The fleet page shows balena's view beside edgefleet's: a real console asking the stand-in of
balena's API through the real balena-sdk, a real orchestrator on a real TLS broker fed real
retained node status, and Chromium reading the page. A device online in balena whose node is
offline is flagged; a device with no node here is listed under the table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from edgefleet.proto.payloads import NodeStatus
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.fleet.balena.standin import BalenaStandIn
from tests.fleet.balena.test_status import APP, DEVICES
from tests.fleet.balena.test_sync import TOKEN
from tests.fleet.console.conftest import PASSWORD, ConsoleProcess
from tests.fleet.console.test_console_browser import wait
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet_status

T = Topics.for_site("lab")


@pytest.fixture(scope="module")
def balena_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleProcess, Path]]:
    tmp = tmp_path_factory.mktemp("console-balena")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    w = Watcher(broker, T.orchestrator_status())
    api = BalenaStandIn(TOKEN, {"acme/site-1": APP}, DEVICES).__enter__()
    console = None
    try:
        for node, state in (("cam-east", "offline"), ("orin-a", "online")):
            w.publish(T.node_status(node), NodeStatus(node_id=node, state=state).dumps(), retain=True)
        assert wait_for(lambda: len(fleet_status(broker)) == 2, timeout=20)
        env = {
            "BALENA_API_KEY": TOKEN,
            "EDGEFLEET_BALENA_API_URL": api.url,
            "EDGEFLEET_CONSOLE_BALENA_FLEET": "acme/site-1",
            "EDGEFLEET_CONSOLE_BALENA_POLL_S": "5",
            "HOME": str(tmp),
        }
        console = ConsoleProcess(tmp, broker, env=env)
        yield console, tmp
    finally:
        if console is not None:
            console.stop()
        api.__exit__(None, None, None)
        w.close()
        orch.stop()
        broker.stop()


def test_fleet_page_shows_balena_beside_the_nodes_and_flags_disagreements(
    balena_site: tuple[ConsoleProcess, Path], browser: Any
) -> None:
    console, _ = balena_site
    browser.get(console.url + "/login")
    browser.find_element(By.ID, "name").send_keys("olivia")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-node="cam-east"] td.balena'))

    def balena_cell(node: str) -> str:
        cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-node="{node}"] td.balena')
        return str(cells[0].text) if cells else ""

    wait(browser, lambda d: "online in balena, node offline" in balena_cell("cam-east"), timeout=30)
    assert balena_cell("orin-a").strip() == "online"  # both views agree: no flag
    others = browser.find_element(By.ID, "balena-others").text
    assert "spare" in others and "not seen" in others
    assert TOKEN not in console.log(), "the balena token is never logged"
