"""The console's releases page in a real browser against a real site: Mosquitto, an orchestrator with its
front door (evaluations go through it), two nodes of group `line` (default small model), the console and
Debian's Chromium. Releases are started the CLI's way (the harness operator's `rollout-start`); the page
shows their waves, gates with figures and the nodes on each version; an operator pauses, resumes and
aborts one from its buttons; a viewer sees no buttons and a viewer's POST is refused. Each test releases
its own version of one template and leaves no rollout active."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.by import By

from edgefleet.proto.payloads import CommandResult
from tests.conftest import NodeProcess, free_port, wait_for
from tests.fleet.console.agents_support import command
from tests.fleet.console.conftest import SCREENSHOTS, ConsoleProcess, Site
from tests.fleet.console.test_console_browser import drain_logs, fetch_page, login, login_http, page_problems, wait
from tests.mqtt_support import Mosquitto, Orchestrator, fleet_status, node_env

pytestmark = pytest.mark.timeout(600)
GROUP = "line"
NODES = ("rc-1", "rc-2")
LOOSE = {"max_p95_ratio": 100.0, "min_tokens_per_s_ratio": 0.01}  # latency is noise on a shared runner
FINAL = ("succeeded", "failed", "aborted")


def template(version: str, body: str) -> dict[str, Any]:
    return {"name": "greet", "version": version, "template": body, "variables": ["who"]}


def start(site: Site, name: str, version: str, *, soak_s: float, evaluation: bool = False) -> CommandResult:
    plan: dict[str, Any] = {
        "name": name,
        "target": {"kind": "group", "name": GROUP},
        "change": {"section": "templates", "entries": {"greet": template(version, "Greet the {{ who }}: say hello.")}},
        "waves": {"canary": ["rc-1"], "steps": [100], "soak_s": soak_s, "apply_timeout_s": 60},
        "gates": LOOSE,
    }
    if evaluation:
        case = {"id": "greets", "template": "greet", "variables": {"who": "technician"}, "contains": ["hello"]}
        plan["evaluation"] = {"cases": [{**case, "max_tokens": 12}]}
    result = command(site.broker.url, "rollout-start", plan=plan)
    assert result.ok, result.message
    return result


def rollout(site: Site, name: str) -> dict[str, Any]:
    r = command(site.broker.url, "rollout-status", name=name)
    assert r.ok, r.message
    return dict(r.data["rollout"])


def finished(site: Site, name: str, timeout: float = 180) -> dict[str, Any]:
    """The status once final, with nothing left to roll back (so the next test may release to the group)."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(rollout(site, name))
        return seen["state"] in FINAL and not seen["rollback_pending"]

    assert wait_for(done, timeout=timeout, interval=0.3), seen.get("events")
    return seen


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("releases-site")
    broker = Mosquitto(tmp)
    env = {"EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{free_port()}", "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
           "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5", "EDGEFLEET_ROLLOUT_CASE_TIMEOUT_S": "30"}  # fmt: skip
    orch = Orchestrator(tmp, broker, env=env)
    nodes = [NodeProcess(tmp, env=node_env(broker, EDGEFLEET_GROUPS=GROUP), node_id=n) for n in NODES]
    console = None
    try:
        for n in nodes:
            n.wait_serving()
        console = ConsoleProcess(tmp, broker)
        s = Site(broker, orch, nodes, console)
        assert wait_for(lambda: set(NODES) <= set(fleet_status(broker)), timeout=30)
        pushed = command(
            broker.url, "push-template", target=f"group:{GROUP}", template=template("1", "Say hello to the {{ who }}.")
        )
        assert pushed.ok, pushed.message
        yield s
    finally:
        if console is not None:
            console.stop()
        for n in nodes:
            n.stop()
        orch.stop()
        broker.stop()


def signed_in(site: Site, browser: Any, who: str) -> None:
    browser.get(site.console.url + "/login")
    browser.delete_all_cookies()
    login(browser, site, who)
    wait(browser, lambda d: urlparse(d.current_url).path == "/")


def text(browser: Any, element_id: str) -> str:
    """The element's text now, read in one script: the page replaces its live part when the status
    changes, so an element found by one WebDriver call may be gone by the next (a stale node)."""
    return str(
        browser.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText.trim() : '';", element_id
        )
    )


def versions(browser: Any) -> dict[str, str]:
    """Version → its nodes (comma separated), as the page shows them now."""
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#versions tbody tr')].map("
        "(r) => [r.cells[0].textContent, r.cells[1].dataset.nodes]));"
    )


def click(browser: Any, element_id: str) -> None:
    """Click a button the page may redraw under us (its live part is replaced when the status changes)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            browser.find_element(By.ID, element_id).click()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_operator_follows_a_release_and_pauses_resumes_and_aborts_it(site: Site, browser: Any) -> None:
    start(site, "slow", "2", soak_s=600)
    signed_in(site, browser, "olivia")
    drain_logs(browser)
    browser.get(site.console.url + "/releases")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-rollout='slow'] a"))
    browser.find_element(By.CSS_SELECTOR, "tr[data-rollout='slow'] a").click()
    wait(browser, lambda d: urlparse(d.current_url).path == "/releases/slow")
    # the page redraws itself as the canary moves: soaking, rc-1 on the release, rc-2 on the previous version
    wait(browser, lambda d: "wave 1/2 soaking" in text(d, "release-where"), timeout=60)
    shown = versions(browser)
    assert shown.get("templates greet@2 (release)") == "rc-1" and shown.get("previous") == "rc-2", shown
    assert "templates greet@2" in text(browser, "release-change") and text(browser, "release-target") == "group:line"
    wstate = "const e = document.querySelector(\"#waves tr[data-wave='1'] .wstate\"); return e ? e.innerText : '';"
    assert browser.execute_script(wstate) == "soaking"

    click(browser, "verb-pause")
    wait(browser, lambda d: text(d, "release-state") == "paused")
    assert "paused" in text(browser, "done") and browser.find_elements(By.ID, "verb-resume")
    paused = rollout(site, "slow")
    assert paused["state"] == "paused"
    # the verb names the console's account it was given for ("<account> via <the console's signer>")
    assert any(e["message"].startswith("paused by olivia") for e in paused["events"]), paused["events"]
    click(browser, "verb-resume")
    wait(browser, lambda d: text(d, "release-state") == "running")
    click(browser, "verb-abort")
    wait(browser, lambda d: text(d, "release-state") == "aborted")
    assert not browser.find_elements(By.ID, "verb-pause")  # nothing left to do to it
    wait(browser, lambda d: versions(d) == {"previous": "rc-1,rc-2"}, timeout=60)  # rc-1 rolled back
    assert "aborted by olivia" in browser.find_element(By.ID, "events").text
    browser.save_screenshot(str(SCREENSHOTS / "release-aborted.png"))
    assert finished(site, "slow")["state"] == "aborted"
    assert not page_problems(browser, site.console.url)


def test_a_viewer_sees_no_buttons_and_a_viewers_post_is_refused(site: Site) -> None:
    start(site, "viewed", "3", soak_s=600)
    try:
        jar, csrf = login_http(site, "victor")
        assert wait_for(lambda: "wave 1/2 soaking" in fetch_page(site, "/releases/viewed", jar=jar)[2], timeout=60)
        status, _, page = fetch_page(site, "/releases/viewed", jar=jar)
        assert status == 200 and 'id="viewer-note"' in page and 'id="verb-' not in page, page
        status, _, body = fetch_page(site, "/releases/viewed/abort", {"csrf_token": csrf}, jar)
        assert status == 403 and "viewer" in body, (status, body)
        assert rollout(site, "viewed")["state"] == "running"
        jar, csrf = login_http(site, "olivia")  # an operator's POST without the CSRF token: refused too
        assert fetch_page(site, "/releases/viewed/pause", {}, jar)[0] == 403
        status, where, _ = fetch_page(site, "/releases/viewed/abort", {"csrf_token": csrf}, jar)
        assert status == 303 and where.startswith("/releases/viewed?done="), (status, where)
        status, _, page = fetch_page(site, "/releases/viewed/abort", {"csrf_token": csrf}, jar)  # aborted already
        assert status == 422 and "abort refused (command_refused)" in page, page
    finally:
        command(site.broker.url, "rollout-abort", name="viewed")
        finished(site, "viewed")


def test_a_gated_release_shows_its_gates_with_figures_and_every_node_on_it(site: Site, browser: Any) -> None:
    start(site, "gated", "4", soak_s=0.5, evaluation=True)
    s = finished(site, "gated", timeout=240)
    assert s["state"] == "succeeded", s["events"]
    signed_in(site, browser, "olivia")
    browser.get(site.console.url + "/releases/gated")
    gates = {r.get_attribute("data-gate"): r.text for r in browser.find_elements(By.CSS_SELECTOR, "#gates tbody tr")}
    assert {"1-health", "1-quality", "2-health", "2-quality"} <= set(gates), gates
    assert "passed" in gates["1-quality"] and "score" in gates["1-quality"], gates
    figures = {
        r.get_attribute("data-node"): r.text for r in browser.find_elements(By.CSS_SELECTOR, "#figures tbody tr")
    }
    assert set(figures) == set(NODES) and all("→" in t for t in figures.values()), figures
    assert versions(browser) == {"templates greet@4 (release)": "rc-1,rc-2"}
    assert not browser.find_elements(By.ID, "verb-abort")  # a finished release has no buttons
    browser.save_screenshot(str(SCREENSHOTS / "release-gated.png"))
    browser.get(site.console.url + "/releases")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-rollout='gated']").text
    assert "succeeded" in row and "group:line" in row, row
