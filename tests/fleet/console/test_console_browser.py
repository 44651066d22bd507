"""The console in a real browser (Debian's Chromium via selenium) against a real site.

One site per module (Mosquitto, orchestrator, two nodes, the console) and one browser. Tests run in
any order: each starts the browser signed out or signed in as it needs, and the test that kills a
node starts a node of its own to kill.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import NodeProcess, wait_for
from tests.fleet.console.conftest import PASSWORD, SCREENSHOTS, Site
from tests.mqtt_support import fleet_status, node_env

pytestmark = pytest.mark.timeout(600)
PAGES = ["/", "/node/edge-1", "/templates", "/rules", "/adapters", "/knowledge", "/sensors", "/playground"]


def fetch_page(site: Site, path: str, data: dict[str, str] | None = None, jar: Any = None) -> tuple[int, str, str]:
    """(status, final path, body) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(
        NoRedirect,
        urllib.request.HTTPCookieProcessor(jar if jar is not None else http.cookiejar.CookieJar()),
        urllib.request.HTTPSHandler(context=site.console.ssl),
    )
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(site.console.url + path, body, timeout=10) as r:
            return r.status, "", r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.read().decode()


def login_http(site: Site, name: str) -> tuple[http.cookiejar.CookieJar, str]:
    """A logged-in cookie jar and its CSRF token, the way a browser gets them."""
    jar = http.cookiejar.CookieJar()
    _, _, page = fetch_page(site, "/login", jar=jar)
    token = page.split('name="login_csrf" value="')[1].split('"')[0]
    status, where, _ = fetch_page(
        site, "/login", {"name": name, "password": PASSWORD, "login_csrf": token, "next": "/"}, jar
    )
    assert status == 303 and where == "/", status
    _, _, home = fetch_page(site, "/templates", jar=jar)
    return jar, home.split('data-csrf="')[1].split('"')[0]


def login(browser: Any, site: Site, name: str, password: str = PASSWORD) -> None:
    browser.get(site.console.url + "/login")
    browser.find_element(By.ID, "name").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()


def wait(browser: Any, predicate: Any, timeout: float = 20) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: predicate(d))


def cells(browser: Any, node: str) -> dict[str, str]:
    """The texts of a node's fleet row, read at once (rows are redrawn live)."""
    return browser.execute_script(
        "const r = document.querySelector(`tr[data-node='${arguments[0]}']`); if (!r) return {};"
        "const names = ['node','state','profile','model','groups','slots','queue','tps','temp','rss','outbox',"
        "'sync','errors'];"
        "return Object.fromEntries([...r.cells].map((c, i) => [names[i], c.textContent]));",
        node,
    )


def drain_logs(browser: Any) -> None:
    browser.get_log("browser")
    browser.get_log("performance")


def settled(browser: Any) -> None:
    """Return once the browser has drawn a frame and run the tasks queued before it: what the page's
    scripts started while loading has happened (or logged its error)."""
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => setTimeout(() => requestAnimationFrame(() => done(true)), 0));"
    )


def page_problems(browser: Any, origin: str) -> list[str]:
    problems = [f"console: {e['message']}" for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith(("data:", "blob:")) and f"{urlparse(url).scheme}://{urlparse(url).netloc}" != origin:
                problems.append(f"request to another host: {url}")
    return problems


@pytest.fixture
def signed_out(site: Site, browser: Any) -> None:
    """The browser with no session, whatever an earlier test left it with."""
    browser.get(site.console.url + "/login")  # on the console's origin, so its cookies can be cleared
    browser.delete_all_cookies()


@pytest.fixture
def operator(site: Site, browser: Any, signed_out: None) -> None:
    """The browser signed in as the operator olivia, on the fleet page."""
    login(browser, site, "olivia")
    wait(browser, lambda d: urlparse(d.current_url).path == "/")


@pytest.mark.usefixtures("signed_out")
def test_every_page_redirects_to_login_without_a_session(site: Site, browser: Any) -> None:
    for path in PAGES:
        status, where, _ = fetch_page(site, path)
        assert status == 303 and where.startswith("/login"), (path, status, where)
    assert fetch_page(site, "/events/fleet")[0] == 401
    assert fetch_page(site, "/templates/push", {"target": "node:edge-1"})[0] == 401
    browser.get(site.console.url + "/templates")
    assert urlparse(browser.current_url).path == "/login"
    browser.save_screenshot(str(SCREENSHOTS / "login.png"))


@pytest.mark.usefixtures("signed_out")
def test_a_wrong_password_is_refused(site: Site, browser: Any) -> None:
    login(browser, site, "olivia", "not the password")
    error = wait(browser, lambda d: d.find_elements(By.ID, "login-error"))[0]
    assert error.text == "wrong name or password"
    assert urlparse(browser.current_url).path == "/login"
    assert browser.get_cookie("edgefleet_session") is None


@pytest.mark.usefixtures("signed_out")
def test_the_fleet_page_lists_both_nodes_with_live_figures(site: Site, browser: Any) -> None:
    login(browser, site, "olivia")
    wait(browser, lambda d: urlparse(d.current_url).path == "/")
    for node in ("edge-1", "edge-2"):
        wait(browser, lambda d, n=node: cells(d, n).get("state", "").startswith("online"))
        wait(browser, lambda d, n=node: cells(d, n)["rss"].endswith("MiB") and "/" in cells(d, n)["slots"])
    row = cells(browser, "edge-1")
    assert "line-a" in row["groups"] and row["profile"] == "x86-dev" and row["tps"] != "–"
    first = browser.find_element(By.ID, "live-mark").text
    wait(browser, lambda d: d.find_element(By.ID, "live-mark").text not in (first, "connecting…"), 10)
    # filter by group
    browser.find_element(By.CSS_SELECTOR, "#filter-group option[value='line-b']").click()
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#fleet-table tbody tr')].map(r => r.dataset.node)"
    )
    assert shown == ["edge-2"]
    browser.find_element(By.CSS_SELECTOR, "#filter-group option[value='']").click()
    browser.save_screenshot(str(SCREENSHOTS / "fleet.png"))


def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    jar, _csrf = login_http(site, "olivia")
    form = {"target": "node:edge-1", "name": "nocsrf", "version": "1", "template": "Hi {{ x }}"}
    status, _, body = fetch_page(site, "/templates/push", form, jar)
    assert status == 403 and "CSRF" in body
    status, _, _ = fetch_page(site, "/templates/push", {**form, "csrf_token": "forged"}, jar)
    assert status == 403
    assert "nocsrf" not in fleet_status(site.broker).get("edge-1", {}).get("templates", {})


def test_a_viewer_cannot_push(site: Site) -> None:
    jar, csrf = login_http(site, "victor")
    form = {"target": "node:edge-1", "name": "byviewer", "version": "1", "template": "Hi", "csrf_token": csrf}
    status, _, body = fetch_page(site, "/templates/push", form, jar)
    assert status == 403 and "viewer" in body
    _, _, page = fetch_page(site, "/templates", jar=jar)
    assert 'id="viewer-note"' in page and 'id="push-submit" disabled' in page


@pytest.mark.usefixtures("operator")
def test_an_invalid_template_shows_the_error_next_to_the_field(site: Site, browser: Any) -> None:
    browser.get(site.console.url + "/templates")
    browser.find_element(By.ID, "target").send_keys("node:edge-1")
    browser.find_element(By.ID, "name").send_keys("broken")
    browser.find_element(By.ID, "version").send_keys("1")
    browser.find_element(By.ID, "template").send_keys("Hello {{ name ")
    browser.find_element(By.ID, "push-submit").click()
    error = wait(browser, lambda d: d.find_elements(By.ID, "error-template"))[0]
    assert "unexpected" in error.text or "template" in error.text.lower(), error.text
    # what was typed is still there, next to the error
    assert browser.find_element(By.ID, "template").get_attribute("value") == "Hello {{ name "
    assert browser.find_element(By.ID, "name").get_attribute("value") == "broken"
    browser.save_screenshot(str(SCREENSHOTS / "templates-error.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-name="broken"]')
    # The refusal is on the page, so the push is over: the orchestrator neither wants it nor has it.
    row = fleet_status(site.broker)["edge-1"]
    assert "broken" not in row["templates"] and not any("broken" in reason for reason in row["drift"]), row


@pytest.mark.usefixtures("operator")
def test_pushing_a_template_from_the_form_reaches_the_node(site: Site, browser: Any) -> None:
    browser.get(site.console.url + "/templates")
    browser.find_element(By.ID, "target").send_keys("node:edge-1")
    browser.find_element(By.ID, "name").send_keys("greet")
    browser.find_element(By.ID, "version").send_keys("1.0.0")
    browser.find_element(By.ID, "template").send_keys("Say hello to {{ who }}.")
    browser.find_element(By.ID, "push-submit").click()
    done = wait(browser, lambda d: d.find_elements(By.ID, "done"))[0]
    assert "greet@1.0.0" in done.text and "node:edge-1" in done.text
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-target="node:edge-1"][data-name="greet"]')
    assert wait_for(lambda: fleet_status(site.broker)["edge-1"]["templates"].get("greet") == "1.0.0", 20)
    browser.get(site.console.url + "/node/edge-1")
    wait(
        browser,
        lambda d: any(
            "greet" in r.text and "1.0.0" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#compare tr.same")
        ),
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "#compare tr.differs")
    browser.get(site.console.url + "/")
    wait(browser, lambda d: cells(d, "edge-1").get("sync") == "in sync")


@pytest.mark.usefixtures("operator")
def test_the_playground_streams_an_answer_and_names_the_node(site: Site, browser: Any) -> None:
    browser.get(site.console.url + "/playground")  # through the front door, the default target
    browser.find_element(By.ID, "question").send_keys("Name a colour.")
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("24")
    browser.find_element(By.ID, "ask").click()
    wait(browser, lambda d: "edge-" in d.find_element(By.ID, "answered-by").text, 30)
    wait(browser, lambda d: "time to first token" in d.find_element(By.ID, "figures").text, 60)
    assert browser.find_element(By.ID, "answer").text.strip()
    assert "tokens/s" in browser.find_element(By.ID, "figures").text
    browser.save_screenshot(str(SCREENSHOTS / "playground.png"))


@pytest.mark.usefixtures("operator")
def test_every_page_loads_without_errors_or_other_hosts(site: Site, browser: Any) -> None:
    drain_logs(browser)
    origin = site.console.url
    for path in PAGES:
        browser.get(origin + path)
        wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")
        if path != "/playground":
            wait(browser, lambda d: d.find_element(By.ID, "live-mark").text.startswith("live"))
        if path.startswith("/node/"):
            wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#plots .uplot")) == 5)
        settled(browser)
        assert page_problems(browser, origin) == [], path
        name = "node" if path.startswith("/node/") else (path.strip("/") or "fleet")
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    # The README's pictures (docs/console-*.png) are copied from build/screenshots/ by hand, not by a test run.


@pytest.mark.usefixtures("operator")
def test_page_after_page_each_loads_without_waiting_for_a_connection(site: Site, browser: Any) -> None:
    """Every page opens a live stream; one left open as the page goes held one of the browser's six
    connections to the console, so the seventh page in a row waited ~60 s for one to time out."""
    from selenium.common.exceptions import TimeoutException

    browser.set_page_load_timeout(20)  # a page that waits for a connection never loads within it
    try:
        for i, path in enumerate([p for p in PAGES if p != "/playground"] * 2):
            try:
                browser.get(site.console.url + path)
            except TimeoutException:
                pytest.fail(f"page {i + 1} in a row ({path}) did not load: an earlier page's live stream is open")
            wait(browser, lambda d: d.find_element(By.ID, "live-mark").text.startswith("live"))
    finally:
        browser.set_page_load_timeout(300)


@pytest.mark.usefixtures("operator")
def test_a_killed_node_turns_offline_without_a_reload(
    site: Site, browser: Any, start_node: Callable[..., NodeProcess]
) -> None:
    doomed = start_node(env=node_env(site.broker, EDGEFLEET_GROUPS="line-c"), node_id="edge-3")  # the site's stay up
    browser.get(site.console.url + "/")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-node="edge-3"][data-state="online"]'), 30)
    browser.execute_script("window.__marker = 1")
    doomed.kill()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-node="edge-3"][data-state="offline"]'), 5)
    assert browser.execute_script("return window.__marker") == 1  # the same page: no reload
    browser.save_screenshot(str(SCREENSHOTS / "fleet-offline.png"))


def test_login_attempts_are_rate_limited(site: Site) -> None:
    jar = http.cookiejar.CookieJar()
    statuses = []
    for _ in range(7):
        _, _, page = fetch_page(site, "/login", jar=jar)
        token = page.split('name="login_csrf" value="')[1].split('"')[0]
        statuses.append(
            fetch_page(site, "/login", {"name": "mallory", "password": "guess", "login_csrf": token}, jar)[0]
        )
    assert statuses[:4] == [401] * 4 and statuses[-1] == 429, statuses


def test_assigning_groups_from_the_node_page_reaches_the_node_without_a_restart(site: Site) -> None:
    """The node page's form sends assign-groups through the orchestrator: edge-1 joins `extra`
    (same process); a bad group name is refused next to the field with what was typed kept;
    a viewer may not assign."""
    pid = site.nodes[0].proc.pid
    jar, csrf = login_http(site, "olivia")
    status, where, _ = fetch_page(site, "/node/edge-1/groups", {"groups": "line-a2, extra", "csrf_token": csrf}, jar)
    assert status == 303 and where.startswith("/node/edge-1?done="), (status, where)
    assert wait_for(lambda: "extra" in fleet_status(site.broker).get("edge-1", {}).get("groups", []), 20)
    assert site.nodes[0].proc.pid == pid and site.nodes[0].proc.poll() is None, "applied without a restart"
    status, _, page = fetch_page(site, "/node/edge-1/groups", {"groups": "ok, a/b", "csrf_token": csrf}, jar)
    assert status == 422 and 'id="groups-error"' in page and "a/b" in page and 'value="ok, a/b"' in page
    viewer, viewer_csrf = login_http(site, "victor")
    status, _, _ = fetch_page(site, "/node/edge-1/groups", {"groups": "x", "csrf_token": viewer_csrf}, viewer)
    assert status == 403


def test_a_refusal_is_shown_next_to_the_field_it_names(site: Site) -> None:
    """The field comes typed (the orchestrator's `CommandResult.field`, the template loader's), never
    from the message's words: an older version at Version, an unknown target at Target, a rule's
    older version at the rule (the rules form has no Version input)."""
    jar, csrf = login_http(site, "olivia")

    def refused_at(kind: str, data: dict[str, str]) -> tuple[str, str]:
        status, _, page = fetch_page(site, f"/{kind}/push", {**data, "csrf_token": csrf}, jar)
        assert status == 422, (data, status)
        assert page.count('class="field-error"') == 1, page
        field = page.split('class="field-error" id="error-')[1].split('"')[0]
        return field, page.split(f'id="error-{field}">')[1].split("</p>")[0]

    form = {"target": "group:fields", "name": "fieldcheck", "template": "Report the plant state."}
    status, _, _ = fetch_page(site, "/templates/push", {**form, "version": "2.0", "csrf_token": csrf}, jar)
    assert status == 303, status
    field, text = refused_at("templates", {**form, "version": "1.0"})
    assert field == "version" and "older_version" in text, (field, text)
    field, text = refused_at("templates", {**form, "version": "3", "target": "no-such-group"})
    assert field == "target" and "not_found" in text, (field, text)
    field, _ = refused_at("templates", {**form, "version": "not a version!"})  # the loader's field
    assert field == "version"
    field, _ = refused_at("templates", {**form, "version": "3", "name": "a/b"})
    assert field == "name"

    rule = "name: fieldrule\nversion: '{}'\ntopic_filter: plant/+/state\ntemplate: fieldcheck\n"
    status, _, _ = fetch_page(
        site, "/rules/push", {"target": "group:fields", "rule": rule.format(2), "csrf_token": csrf}, jar
    )
    assert status == 303, status
    field, text = refused_at("rules", {"target": "group:fields", "rule": rule.format(1)})
    assert field == "rule" and "older_version" in text, (field, text)


@pytest.mark.usefixtures("operator")
def test_a_pdf_pushed_from_the_knowledge_form_is_searchable_on_the_node_by_page(
    site: Site, browser: Any, tmp_path: Path
) -> None:
    """The knowledge form takes PDFs (read as the CLI and the node read them): a scan is refused next to
    the files field; a PDF and a Markdown file reach the node, the PDF's chunks keeping their pages."""
    from edgefleet.proto.v1 import inference_pb2 as pb
    from tests.node.knowledge.test_documents_ids import write_pdf

    def push(*files: Path) -> None:
        browser.get(site.console.url + "/knowledge")
        browser.find_element(By.ID, "target").send_keys("node:edge-1")
        browser.find_element(By.ID, "name").send_keys("pumps")
        browser.find_element(By.ID, "version").send_keys("1")
        browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
        browser.find_element(By.ID, "push-submit").click()

    scan = write_pdf(tmp_path / "scan.pdf", [""])
    push(scan)  # refused by the console itself, before anything is sent
    error = wait(browser, lambda d: d.find_elements(By.ID, "error-files"))[0]
    assert "scan.pdf has no text layer" in error.text and "OCR" in error.text, error.text
    pdf = write_pdf(tmp_path / "pump 3.pdf", ["Pump 3 manual, cover.", "Replace the shaft seal every 8000 hours."])
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe strainer is cleaned weekly.\n", encoding="utf-8")
    ready = wait_for(lambda: "edge-1" in fleet_status(site.broker), 60)  # the orchestrator is up and knows it
    assert ready, site.orchestrator.log_path.read_text(errors="replace")[-3000:]
    push(pdf, notes)
    done = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#done, .field-error"), timeout=60)[0]
    assert "pumps@1" in done.text, done.text
    assert wait_for(lambda: fleet_status(site.broker).get("edge-1", {}).get("knowledge", {}).get("pumps") == "1", 60)
    hits = site.nodes[0].stub.Retrieve(pb.RetrieveRequest(query="shaft seal hours", collection="pumps", top_k=1))
    hit = hits.chunks[0]
    assert (hit.doc_id, dict(hit.metadata)) == ("pump 3.pdf", {"source": "pump 3.pdf", "page": "2"})
