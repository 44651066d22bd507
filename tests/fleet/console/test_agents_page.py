"""The console's agents page in a real browser against a real site with a real node running agent rules.

Mosquitto, the orchestrator, the console, one node running the 0.5B model that chooses tools well, and
Debian's Chromium through selenium. Tools and agent rules reach the node through the orchestrator's
`set-tool` / `set-agent`; a sensor message starts a run; the page shows it live, with its steps; an
`act` call outside its rule's limits waits in the queue, where an operator approves or denies it
(a viewer is refused), and the node acts on the signed decision. Each test starts its own run (its
own machine in the sensor topic) and finds it by what the page shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from selenium.webdriver.support.ui import Select

from edgefleet.proto.agent_runs import ApprovalDecision
from edgefleet.proto.payloads import parse_payload
from edgefleet.proto.signing import SignatureError
from tests.conftest import NodeProcess, wait_for
from tests.fleet.console.agents_support import (
    FIRST_RUN_OF,
    SHOWN_RUNS,
    Decisions,
    click_in_row,
    command,
    listed,
    open_agents,
    queue_row,
    run_cells,
    site_keys,
    type_reason,
)
from tests.fleet.console.conftest import SCREENSHOTS, ConsoleProcess, Site
from tests.fleet.console.test_console_browser import drain_logs, fetch_page, login_http, page_problems, wait
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env

pytestmark = pytest.mark.timeout(900)

NODE = "agents-ui"
MODEL = "qwen2.5-coder-0.5b-instruct"  # the bundled model that chooses tools well
RUN_S = 240  # a few 0.5B turns on one thread of a busy 2-core runner
ENDED = ("done", "failed", "stopped")
MACHINE = {"machine": {"type": "string"}}
TOOLS = [
    {
        "name": "open_ticket",
        "version": "1",
        "kind": "act",
        "description": "Open a maintenance ticket for a machine with a priority from 1 (low) to 5 (urgent).",
        "parameters": {
            "type": "object",
            "properties": {**MACHINE, "priority": {"type": "integer"}},
            "required": ["machine", "priority"],
        },
        "binding": {"type": "publish", "topic": "actions/tickets/{machine}"},
    },
    {
        "name": "read_temperature",
        "version": "1",
        "kind": "read",
        "description": "Read the latest temperature reading of a machine.",
        "parameters": {"type": "object", "properties": MACHINE, "required": ["machine"]},
        "binding": {"type": "sensor_latest", "topic": "sensors/{machine}/temperature"},
    },
]
TICKETS_WITHIN = {"open_ticket": {"calls_per_hour": 10, "args": {"priority": {"minimum": 1, "maximum": 3}}}}
URGENT_GOAL = (
    'Machine {{ machine }} raised an alarm. Call open_ticket with machine "{{ machine }}" and priority 5. '
    "Then answer in one sentence."
)


def agent(name: str, level: str, goal: str, tools: list[str], **limits: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "trigger": {"type": "sensor", "topic_filter": f"sensors/+/{level}", "variables": {"machine": "topic[1]"}},
        "goal": goal,
        "tools": tools,
        "limits": {"max_tokens": 96, **limits},
    }


AGENTS = [
    # a ticket of priority 1-3 opens by itself; priority 5 waits for an operator
    agent("urgent", "alarm", URGENT_GOAL, ["open_ticket"], max_steps=3, act=TICKETS_WITHIN),
    # the same, but nobody answers in time
    agent("leak", "leak", URGENT_GOAL, ["open_ticket"], max_steps=2, act=TICKETS_WITHIN, approval_timeout_s=10),
    # one model turn: many short runs for the pager
    agent("ping", "ping", 'Call read_temperature with machine "{{ machine }}".', ["read_temperature"], max_steps=1),
]


@pytest.fixture(scope="module")
def agent_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Watcher]]:
    """The site, with the node's tools and agent rules pushed through the orchestrator's commands; and
    a harness client that publishes sensor messages and records what is published on `actions/#`."""
    from edgefleet.node.model_catalog import resolve_model

    tmp = tmp_path_factory.mktemp("agents-site")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    console = node = actions = None
    try:
        console = ConsoleProcess(tmp, broker)
        model = str(resolve_model(MODEL, tmp / "model").path)
        node = NodeProcess(tmp, node_id=NODE, env=node_env(broker, EDGEFLEET_MODEL=model))
        node.wait_serving(timeout=180)
        for field, specs in (("tool", TOOLS), ("agent", AGENTS)):
            for spec in specs:
                result = command(broker.url, f"set-{field}", target=f"node:{NODE}", **{field: spec})
                assert result.ok, result.message
        actions = Watcher(broker, "actions/#")
        yield Site(broker, orch, [node], console), actions
    finally:
        if actions is not None:
            actions.close()
        if node is not None:
            node.stop()
        if console is not None:
            console.stop()
        orch.stop()
        broker.stop()


@pytest.fixture
def site(agent_site: tuple[Site, Watcher]) -> Site:
    return agent_site[0]


@pytest.fixture
def actions(agent_site: tuple[Site, Watcher]) -> Watcher:
    return agent_site[1]


@pytest.fixture
def decisions(site: Site) -> Iterator[Decisions]:
    d = Decisions(site.broker, NODE)
    yield d
    d.close()


def alarm(browser: Any, actions: Watcher, machine: str, level: str = "alarm") -> str:
    """A sensor message that starts a run of the node's rule for `level`; the run's id, once the page shows it."""
    before = browser.execute_script(SHOWN_RUNS)
    actions.publish(f"sensors/{machine}/{level}", json.dumps({"id": f"{machine}-{level}"}).encode())
    return str(wait(browser, lambda d: d.execute_script(FIRST_RUN_OF, NODE, before), timeout=RUN_S))


def waiting_call(site: Site, browser: Any, actions: Watcher, machine: str, who: str = "olivia") -> tuple[str, int]:
    """A run whose open_ticket call (priority 5) waits in the queue, on the page of `who`: (run id, step)."""
    open_agents(browser, site, who)
    run_id = alarm(browser, actions, machine)
    row = wait(browser, lambda d: queue_row(d, run_id), timeout=RUN_S)
    assert listed(site.broker.url, run_id), "the orchestrator never listed the waiting call"
    return run_id, int(row["step"])


def test_a_run_shows_live_with_its_steps_and_its_waiting_call(site: Site, actions: Watcher, browser: Any) -> None:
    open_agents(browser, site, "olivia")
    browser.execute_script("window.__samePage = true;")  # gone if the page were loaded again
    drain_logs(browser)
    run_id = alarm(browser, actions, "m8")
    row = run_cells(browser, run_id)
    assert row is not None and row["node"] == NODE and row["rule"] == "urgent@1", row
    q = wait(browser, lambda d: queue_row(d, run_id), timeout=RUN_S)
    assert q["node"] == NODE and q["rule"] == f"urgent · step {q['step']}" and q["tool"] == "open_ticket", q
    assert json.loads(q["args"]) == {"machine": "m8", "priority": 5}, q
    assert "priority=5 is above its maximum 3" in q["why"], q
    assert q["expires"].endswith(("s", "min")), q  # counting down from the rule's approval_timeout_s
    row = wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] == "waiting" and r)
    assert int(row["steps"]) >= 2 and "open_ticket" in row["reason"], row
    assert browser.execute_script("return window.__samePage === true"), "the page was loaded again"
    assert page_problems(browser, site.console.url) == []
    browser.save_screenshot(str(SCREENSHOTS / "agents.png"))

    browser.find_element("css selector", f"#runs tr[data-run='{run_id}'] a").click()
    wait(browser, lambda d: urlparse(d.current_url).path == f"/agents/run/{run_id}")
    step = f"#steps tbody tr[data-step='{q['step']}']"
    wait(browser, lambda d: d.find_elements("css selector", step))
    cells = [c.text for c in browser.find_elements("css selector", f"{step} td")]
    assert cells[1:5] == ["tool", "open_ticket", '{"machine": "m8", "priority": 5}', "waiting"], cells
    assert "priority=5 is above its maximum 3" in cells[5], cells
    kinds = [c.text for c in browser.find_elements("css selector", "#steps tbody tr td:nth-child(2)")]
    assert kinds[0] == "model", kinds
    assert "priority=5" in browser.find_element("css selector", "[data-field='waiting for']").text
    assert page_problems(browser, site.console.url) == []
    browser.save_screenshot(str(SCREENSHOTS / "agent-run.png"))


def test_approving_in_chromium_sends_a_signed_decision_and_the_node_runs_the_call_once(
    site: Site, actions: Watcher, decisions: Decisions, browser: Any
) -> None:
    run_id, first = waiting_call(site, browser, actions, "m7")
    assert actions.on("actions/tickets/m7") == []  # nothing happens before an operator says so
    type_reason(browser, run_id, "line stopped; ticket it", first)
    click_in_row(browser, run_id, "button.approve", first)

    # the orchestrator signs a decision with the site key, naming the operator, and keeps it retained
    decision = parse_payload(ApprovalDecision, decisions.first(run_id))
    site_keys().verify(decision)
    with pytest.raises(SignatureError):  # the signature covers who decided, and what
        site_keys().verify(decision.model_copy(update={"operator": "mallory"}))
    assert (decision.node_id, decision.run_id, decision.step, decision.approve) == (NODE, run_id, first, True)
    assert decision.operator == "olivia via console" and decision.reason == "line stopped; ticket it", decision
    late = decisions.retained(run_id)  # what a node that was away finds when it comes back
    assert late and parse_payload(ApprovalDecision, late) == decision

    # the node takes it and reports the step approved: the call leaves the queue, and it acts once
    wait(browser, lambda d: queue_row(d, run_id, first) is None, timeout=RUN_S)
    assert wait_for(lambda: len(actions.on("actions/tickets/m7")) >= 1, timeout=30)
    # the model may ask for a second ticket (a new call, waiting in its turn): deny each
    for _ in range(3):
        more = wait(
            browser,
            lambda d: (
                ((r := run_cells(d, run_id)) and r["state"] in ENDED and "ended")
                or ((q := queue_row(d, run_id)) and q["step"] != first and str(q["step"]))
            ),
            timeout=RUN_S,
        )
        if more == "ended":
            break
        type_reason(browser, run_id, "one ticket is enough", int(more))
        click_in_row(browser, run_id, "button.deny", int(more))
        wait(browser, lambda d, m=int(more): queue_row(d, run_id, m) is None, timeout=RUN_S)
        said = [parse_payload(ApprovalDecision, p) for p in decisions.on(run_id)]
        assert [(d.approve, d.reason, d.operator) for d in said if d.step == int(more)] == [
            (False, "one ticket is enough", "olivia via console")
        ], said
    wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] in ENDED, timeout=RUN_S)
    published = actions.on("actions/tickets/m7")
    assert len(published) == 1, published  # the approved call, once; a denied one never
    assert published[0]["arguments"] == {"machine": "m7", "priority": 5}
    assert published[0]["idempotency_key"] == f"{run_id}:{first}"

    # the run's page: the call approved, naming who approved it in the console
    browser.get(f"{site.console.url}/agents/run/{run_id}")
    step = f"#steps tbody tr[data-step='{first}']"
    wait(browser, lambda d: d.find_elements("css selector", f"{step} td.verdict"))
    verdict = browser.find_element("css selector", f"{step} td.verdict").text
    detail = browser.find_element("css selector", f"{step} td.detail").text
    assert verdict == "approved" and "olivia via console" in detail, (verdict, detail)


def test_a_viewer_sees_the_queue_and_is_refused_with_the_reason_kept(
    site: Site, actions: Watcher, decisions: Decisions, browser: Any
) -> None:
    run_id, step = waiting_call(site, browser, actions, "m9", who="victor")
    assert browser.find_element("id", "viewer-note").is_displayed()
    type_reason(browser, run_id, "I think it is fine", step)
    click_in_row(browser, run_id, "button.approve", step)
    q = wait(browser, lambda d: (r := queue_row(d, run_id, step)) and "bad" in r["outcomeClass"] and r)
    assert "refused: victor is a viewer" in q["outcome"], q
    assert q["reason"] == "I think it is fine", q
    assert decisions.on(run_id) == []  # refused before anything was sent
    assert listed(site.broker.url, run_id), "the call still waits"


def test_bad_input_is_named_and_nothing_typed_is_lost(
    site: Site, actions: Watcher, decisions: Decisions, browser: Any
) -> None:
    run_id, step = waiting_call(site, browser, actions, "m10")
    hidden = f"#approvals tr[data-run='{run_id}'] input[name=step]"
    for value, words in (
        ("two", "step: step 'two' must be a whole number"),  # the console's check, naming the field
        ("99", f"step: refused (command_refused): cannot approve step 99: run {run_id}"),  # the orchestrator's
    ):
        browser.execute_script(f'document.querySelector("{hidden}").value = arguments[0];', value)
        type_reason(browser, run_id, f"typed with step {value}", step)
        click_in_row(browser, run_id, "button.approve", step)
        q = wait(browser, lambda d, w=words: (r := queue_row(d, run_id)) and w in r["outcome"] and r)
        assert "bad" in q["outcomeClass"] and q["reason"] == f"typed with step {value}", q
    assert f"waits at step {step}" in q["outcome"], q
    assert decisions.on(run_id) == []
    # posted without script: the page comes back with the refusal and what was typed
    jar, csrf = login_http(site, "olivia")
    form = {"csrf_token": csrf, "node": NODE, "run_id": run_id, "step": "x", "reason": "kept"}
    status, _, body = fetch_page(site, "/agents/deny", form, jar)
    assert status == 422, status
    view = json.loads(body.split('<script type="application/json" id="agents-view">')[1].split("</script>")[0])
    assert view["form"]["field"] == "step" and view["form"]["reason"] == "kept", view["form"]
    assert any(a["run_id"] == run_id for a in view["approvals"])


def test_a_call_nobody_answers_expires_and_leaves_the_queue(
    site: Site, actions: Watcher, decisions: Decisions, browser: Any
) -> None:
    open_agents(browser, site, "olivia")
    run_id = alarm(browser, actions, "m11", level="leak")
    wait(browser, lambda d: queue_row(d, run_id), timeout=RUN_S)
    wait(browser, lambda d: queue_row(d, run_id) is None, timeout=60)  # approval_timeout_s is 10
    row = wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] in ENDED and r, timeout=RUN_S)
    assert "expired" in row["reason"], row
    assert actions.on("actions/tickets/m11") == [] and decisions.on(run_id) == []


def test_runs_are_listed_newest_first_a_page_at_a_time(site: Site, actions: Watcher, browser: Any) -> None:
    def ping_runs() -> list[dict[str, Any]]:
        r = command(site.broker.url, "agent-runs", rule="ping", limit=100)
        assert r.ok, r.message
        return list(r.data["runs"])

    before = len(ping_runs())  # another test may have started one
    for i in range(12):
        actions.publish(f"sensors/p{i}/ping", json.dumps({"id": f"ping-{i}"}).encode())
    total = before + 12
    assert wait_for(lambda: len(runs := ping_runs()) == total and all(r["state"] in ENDED for r in runs), RUN_S * 2)
    runs = ping_runs()
    assert [r["started"] for r in runs] == sorted((r["started"] for r in runs), reverse=True)
    newest_first = [r["run_id"] for r in runs]
    open_agents(browser, site, "olivia")
    browser.find_element("id", "filter-rule").send_keys("ping")
    Select(browser.find_element("id", "page-size")).select_by_visible_text("10")
    browser.find_element("id", "filter-submit").click()
    wait(browser, lambda d: d.find_element("id", "page-info").text == f"1–10 of {total}")
    assert browser.execute_script(SHOWN_RUNS) == newest_first[:10]
    browser.find_element("id", "page-next").click()
    wait(browser, lambda d: d.find_element("id", "page-info").text == f"11–{min(20, total)} of {total}")
    assert browser.execute_script(SHOWN_RUNS) == newest_first[10:20]
    assert "rule=ping" in browser.current_url and "offset=10" in browser.current_url


def test_page_after_page_each_loads_without_waiting_for_a_connection(
    site: Site, actions: Watcher, browser: Any
) -> None:
    """Both pages hold a live stream; each must close it as the page goes, or the seventh page in a row
    waits for one of the browser's six connections to the console."""
    from selenium.common.exceptions import TimeoutException

    open_agents(browser, site, "olivia")
    run_id = alarm(browser, actions, "m12", level="ping")
    browser.set_page_load_timeout(20)  # a page that waits for a connection never loads within it
    try:
        for i, path in enumerate(["/agents", f"/agents/run/{run_id}"] * 5):
            try:
                browser.get(site.console.url + path)
            except TimeoutException:
                pytest.fail(f"page {i + 1} in a row ({path}) did not load: an earlier page's live stream is open")
            wait(browser, lambda d: d.find_element("id", "live-mark").text.startswith("live"))
    finally:
        browser.set_page_load_timeout(300)
