"""The console's agents page: runs shown live, one run's steps, and the approval queue, in a real browser.

A real site without nodes: Mosquitto, the orchestrator and the console, and Debian's Chromium through
selenium. The node's side is played at its MQTT contract (proto/agents.py): a client with a node's own
certificate publishes the AgentRunReports a node publishes (agents/runs/<node>), and reads the signed
decision the orchestrator publishes for it (agents/decisions/<node>/<run>). The node-in-the-loop site
test (a real node running an agent rule) is tests/…/agents' own; this one is about the page.

The first tests are the page's pure parts (how the orchestrator's answer and the console's newer reports
are merged, how the query and the form are read), without a site.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
from multidict import MultiDict
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver.support.ui import Select

from edgefleet.fleet.console.agent_feed import merge_approvals, merge_runs, run_row
from edgefleet.fleet.console.agents_page import AgentQuery, FormError, QueryError, decision_command
from edgefleet.plumbing.site_tls import client_ssl_context
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.agents import AgentRunReport, AgentStep, ApprovalDecision, ApprovalRequest
from edgefleet.proto.payloads import parse_payload
from edgefleet.proto.signing import KeyRing, SignatureError, load_public_keys
from edgefleet.proto.topics import Topics
from tests import site_identity

NODE = "edge-agent"
ARGS = '{"machine": "m1", "pct": 80}'


# -- pure parts -----------------------------------------------------------------------------------------
def report(run_id: str, state: str = "running", ts: float = 100.0, started: float = 50.0, **kw: Any) -> dict[str, Any]:
    return {
        "node_id": kw.pop("node_id", NODE),
        "run_id": run_id,
        "rule": kw.pop("rule", "overheat"),
        "rule_version": "1",
        "trigger": "sensors/m1/temp",
        "state": state,
        "steps": [{"index": 0, "kind": "model"}],
        "started": started,
        "ts": ts,
        **kw,
    }


def test_a_newer_report_the_console_saw_wins_over_the_orchestrators_row() -> None:
    page = {"runs": [report("run-aaaaaaaa", "running", ts=100.0)], "total": 1}
    seen = {"run-aaaaaaaa": run_row(report("run-aaaaaaaa", "done", ts=101.0, reason="answered"))}
    rows, total = merge_runs(page, seen, {"offset": 0, "limit": 25})
    assert [(r["run_id"], r["state"], r["reason"]) for r in rows] == [("run-aaaaaaaa", "done", "answered")]
    assert total == 1
    older = {"run-aaaaaaaa": run_row(report("run-aaaaaaaa", "waiting", ts=99.0))}
    assert merge_runs(page, older, {"offset": 0, "limit": 25})[0][0]["state"] == "running"


def test_runs_the_orchestrator_has_not_listed_yet_come_first_on_the_first_page_only() -> None:
    page = {"runs": [report("run-old00000", started=10.0)], "total": 1}
    seen = {"run-new00000": run_row(report("run-new00000", started=20.0))}
    rows, total = merge_runs(page, seen, {"offset": 0, "limit": 25})
    assert [r["run_id"] for r in rows] == ["run-new00000", "run-old00000"] and total == 2
    rows, total = merge_runs(page, seen, {"offset": 25, "limit": 25})
    assert [r["run_id"] for r in rows] == ["run-old00000"] and total == 1
    # a filter holds for them too: a run of another rule is not added, and a row that left the filter goes
    assert [r["run_id"] for r in merge_runs(page, seen, {"rule": "other", "offset": 0, "limit": 25})[0]] == [
        "run-old00000"
    ]
    moved = {"run-old00000": run_row(report("run-old00000", "done", ts=200.0, started=10.0))}
    assert merge_runs(page, moved, {"state": "running", "offset": 0, "limit": 25}) == ([], 0)


def pending(run_id: str, step: int, expires_at: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step,
        "tool": "open_valve",
        "arguments": '{"pct": 80}',
        "why": "pct > 50",
        "expires_at": expires_at,
    }


def test_the_queue_drops_answered_and_expired_calls_and_adds_those_only_the_console_saw() -> None:
    now = 1000.0
    from_orchestrator = [
        {**pending("run-answered", 1, now + 60), "node_id": NODE},
        {**pending("run-expired0", 1, now - 1), "node_id": NODE},
        {**pending("run-waits000", 2, now + 30), "node_id": NODE},
    ]
    reports = {
        "run-answered": report("run-answered", "running"),  # the node moved on: approved or denied
        "run-waits000": report("run-waits000", "waiting", pending=pending("run-waits000", 2, now + 30)),
        "run-new00000": report("run-new00000", "waiting", pending=pending("run-new00000", 3, now + 90)),
    }
    decisions = {"run-waits000:2": {"approve": True, "operator": "olivia", "reason": "", "ts": now}}
    queue = merge_approvals(from_orchestrator, reports, decisions, now)
    assert [(a["run_id"], a["step"]) for a in queue] == [("run-waits000", 2), ("run-new00000", 3)]
    assert queue[0]["decision"]["operator"] == "olivia" and queue[1]["decision"] is None
    assert queue[1]["rule"] == "overheat" and queue[1]["node_id"] == NODE


def test_the_query_names_what_is_wrong() -> None:
    assert AgentQuery.parse(MultiDict(node="edge-1", state="waiting", limit="10")) == AgentQuery(
        "edge-1", "", "waiting", 0, 10
    )
    for bad, word in (
        ({"state": "sleeping"}, "state"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"limit": "7"}, "limit"),
        ({"node": "../x"}, "node"),
    ):
        with pytest.raises(QueryError, match=word):
            AgentQuery.parse(MultiDict(bad))


def test_a_decision_form_names_the_field_that_is_wrong() -> None:
    good = {"node": NODE, "run_id": "run-12345678", "step": "2", "reason": " looks fine "}
    cmd = decision_command("approve", MultiDict(good))
    assert cmd.op == "approve" and cmd.request.step == 2 and cmd.request.reason == "looks fine"
    for field, value in (("node", "a/b"), ("run_id", "short"), ("step", "two"), ("step", "-1"), ("reason", "x" * 600)):
        with pytest.raises(FormError) as e:
            decision_command("deny", MultiDict({**good, field: value}))
        assert e.value.field == field, (field, e.value.message)


# -- a site and a stand-in for the node at its MQTT contract ----------------------------------------------
class NodeSide:
    """MQTT as node NODE: its own certificate; publishes run reports, reads the decisions about its runs."""

    def __init__(self, broker: Any) -> None:
        self.topics = Topics.for_site("lab")
        env = site_identity.site().node_env(NODE)
        files = TlsFiles(
            Path(env["EDGEFLEET_MQTT_CERT_FILE"]),
            Path(env["EDGEFLEET_MQTT_KEY_FILE"]),
            Path(env["EDGEFLEET_MQTT_CA_FILE"]),
        )
        self.decisions: list[tuple[str, bytes, bool]] = []
        self.started: dict[str, AgentRunReport] = {}  # run id → the last report published
        self.arrived = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{NODE}-agents", protocol=mqtt.MQTTv5)
        self.ssl = client_ssl_context(files)
        self.client.tls_set_context(self.ssl)
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(self.topics.node_agent_decisions(NODE), qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.port = broker.port
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10), "the node's client could not subscribe to its decisions"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.decisions.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrived.notify_all()

    def decision(self, run_id: str, timeout: float = 20) -> ApprovalDecision:
        """The first (non-empty) decision about `run_id` this node received."""
        topic = self.topics.agent_decisions(NODE, run_id)
        with self.arrived:
            self.arrived.wait_for(lambda: any(t == topic and p for t, p, _ in self.decisions), timeout)
            found = [p for t, p, _ in self.decisions if t == topic and p]
        assert found, f"no decision on {topic}"
        return parse_payload(ApprovalDecision, found[0])

    def retained(self, run_id: str, timeout: float = 10) -> bytes:
        """What a node connecting now finds retained on the decision topic of `run_id` (b"": nothing)."""
        got: list[bytes] = []
        done = threading.Event()
        topic = self.topics.agent_decisions(NODE, run_id)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{NODE}-late", protocol=mqtt.MQTTv5)
        c.tls_set_context(self.ssl)
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            if m.retain:
                got.append(bytes(m.payload))
            done.set()

        c.on_message = on_message
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        try:
            done.wait(timeout)
        finally:
            c.loop_stop()
            c.disconnect()
        return got[0] if got else b""

    def decisions_on(self, run_id: str) -> list[bytes]:
        topic = self.topics.agent_decisions(NODE, run_id)
        with self.arrived:
            return [p for t, p, _ in self.decisions if t == topic and p]

    def publish(self, r: AgentRunReport) -> None:
        self.started[r.run_id] = r
        self.client.publish(self.topics.agent_runs(NODE), r.dumps(), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def model_step(i: int, text: str) -> AgentStep:
    return AgentStep(index=i, kind="model", detail=text)


def tool_step(i: int, tool: str, args: str, verdict: str, result: str = "", detail: str = "") -> AgentStep:
    return AgentStep(
        index=i,
        kind="tool",
        tool=tool,
        call_id=f"call_{i}",
        arguments=args,
        verdict=verdict,
        result=result,
        detail=detail,
    )


def waiting_run(run_id: str, started: float, expires_in: float = 600) -> AgentRunReport:
    """A run whose act call (step 2) waits for an operator: outside its rule's limits."""
    steps = [
        model_step(0, "The temperature is high; I will read the coolant flow first."),
        tool_step(1, "read_flow", '{"machine": "m1"}', "ran", result='{"flow_lpm": 2.1}'),
        tool_step(2, "open_valve", '{"machine": "m1", "pct": 80}', "waiting", detail="pct 80 is above the maximum 50"),
    ]
    return AgentRunReport(
        node_id=NODE,
        run_id=run_id,
        rule="coolant",
        rule_version="1",
        trigger="sensors/m1/temp",
        state="waiting",
        reason="waiting for approval of open_valve",
        steps=steps,
        started=started,
        pending=ApprovalRequest(
            run_id=run_id,
            step=2,
            tool="open_valve",
            arguments='{"machine": "m1", "pct": 80}',
            why="pct 80 is above the maximum 50",
            expires_at=time.time() + expires_in,
        ),
    )


@pytest.fixture(scope="module")
def agent_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.fleet.console.conftest import ConsoleProcess, Site
    from tests.mqtt_support import Mosquitto, Orchestrator

    tmp = tmp_path_factory.mktemp("agents-site")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    console = node = None
    try:
        console = ConsoleProcess(tmp, broker)
        node = NodeSide(broker)
        yield Site(broker, orch, [], console), node
    finally:
        if node is not None:
            node.close()
        if console is not None:
            console.stop()
        orch.stop()
        broker.stop()


@pytest.fixture
def site(agent_site: Any) -> Any:
    return agent_site[0]


@pytest.fixture
def node(agent_site: Any) -> Iterator[NodeSide]:
    """The node's side; the runs a test left waiting are ended after it, so each test starts with an empty queue."""
    side: NodeSide = agent_site[1]
    side.started.clear()
    yield side
    for r in side.started.values():
        if r.state == "waiting":
            over = {"state": "stopped", "reason": "test over", "pending": None, "ts": time.time()}
            side.publish(r.model_copy(update=over))


# -- in the browser -------------------------------------------------------------------------------------
def orchestrator_lists(site: Any, run_id: str) -> bool:
    """Whether the orchestrator's `approvals` holds a call of `run_id` (it took the node's report in)."""
    from edgefleet.fleet.control import OrchestratorSession
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.proto.commands import Command

    session = OrchestratorSession(FleetSettings(mqtt_url=site.broker.url, site="lab"), connect_timeout=5)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result = session.call(Command(op="approvals"), timeout=5)
            if result.ok and any(a.get("run_id") == run_id for a in result.data.get("approvals", [])):
                return True
            time.sleep(0.1)  # polling a command: the orchestrator has no event to wait on for this
        return False
    finally:
        session.close()


def queue_row(browser: Any, run_id: str) -> dict[str, Any]:
    """A queue row's texts, read at once (rows are updated live)."""
    return browser.execute_script(
        "const r = document.querySelector(`#approvals tr[data-run='${arguments[0]}']`); if (!r) return null;"
        "const c = r.cells; return {node: c[0].textContent, rule: c[1].textContent, tool: c[2].textContent,"
        "args: c[3].textContent, why: c[4].textContent, expires: c[5].textContent,"
        "decided: r.querySelector('.decided-by').textContent, outcome: r.querySelector('.outcome').textContent,"
        "outcomeClass: r.querySelector('.outcome').className, reason: r.querySelector('input.reason').value};",
        run_id,
    )


def run_cells(browser: Any, run_id: str) -> dict[str, str] | None:
    return browser.execute_script(
        "const r = document.querySelector(`#runs tr[data-run='${arguments[0]}']`); if (!r) return null;"
        "const n = ['node','rule','state','reason','steps','started'];"
        "return Object.fromEntries([...r.cells].map((c, i) => [n[i], c.textContent]));",
        run_id,
    )


SHOWN_RUNS = "return [...document.querySelectorAll('#runs tbody tr')].map((r) => r.dataset.run);"


def open_agents(browser: Any, site: Any, who: str) -> None:
    from tests.fleet.console.test_console_browser import login, wait

    browser.get(site.console.url + "/login")
    browser.delete_all_cookies()
    login(browser, site, who)
    wait(browser, lambda d: urlparse(d.current_url).path == "/")
    browser.get(site.console.url + "/agents")
    wait(browser, lambda d: d.find_element("id", "live-mark").text.startswith("live"))


def click_in_row(browser: Any, run_id: str, css: str) -> None:
    browser.find_element("css selector", f"#approvals tr[data-run='{run_id}'] {css}").click()


def type_reason(browser: Any, run_id: str, text: str) -> None:
    box = browser.find_element("css selector", f"#approvals tr[data-run='{run_id}'] input.reason")
    box.clear()
    box.send_keys(text)


def site_keys() -> KeyRing:
    return KeyRing(load_public_keys([site_identity.site().site_pub]))


def test_a_run_shows_up_live_and_its_steps_on_its_page(site: Any, node: NodeSide, browser: Any) -> None:
    from tests.fleet.console.conftest import SCREENSHOTS
    from tests.fleet.console.test_console_browser import drain_logs, page_problems, wait

    open_agents(browser, site, "olivia")
    browser.execute_script("window.__samePage = true;")  # gone if the page were loaded again
    drain_logs(browser)
    run_id, started = new_run_id(), time.time()
    node.publish(
        AgentRunReport(
            node_id=NODE,
            run_id=run_id,
            rule="coolant",
            rule_version="1",
            trigger="sensors/m1/temp",
            state="running",
            started=started,
            steps=[model_step(0, "The temperature is high; I will read the coolant flow first.")],
        )
    )
    row = wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] == "running" and r)
    assert row["node"] == NODE and row["rule"] == "coolant@1" and row["steps"] == "1", row
    node.publish(waiting_run(run_id, started))
    row = wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] == "waiting" and r)
    assert row["steps"] == "3" and "waiting for approval" in row["reason"], row
    q = wait(browser, lambda d: queue_row(d, run_id))
    assert q["node"] == NODE and q["rule"].startswith("coolant") and "step 2" in q["rule"], q
    assert q["tool"] == "open_valve" and json.loads(q["args"]) == {"machine": "m1", "pct": 80}, q
    assert q["why"] == "pct 80 is above the maximum 50" and q["expires"].endswith(("s", "min")), q
    assert browser.execute_script("return window.__samePage === true"), "the page was loaded again"
    assert page_problems(browser, site.console.url) == []
    browser.save_screenshot(str(SCREENSHOTS / "agents.png"))

    browser.find_element("css selector", f"#runs tr[data-run='{run_id}'] a").click()
    wait(browser, lambda d: urlparse(d.current_url).path == f"/agents/run/{run_id}")
    steps = wait(
        browser,
        lambda d: (
            len(d.find_elements("css selector", "#steps tbody tr")) == 3
            and d.find_elements("css selector", "#steps tbody tr")
        ),
    )
    texts = [[c.text for c in s.find_elements("tag name", "td")] for s in steps]
    assert texts[0][1] == "model" and "read the coolant flow" in texts[0][5], texts[0]
    assert texts[1][1:5] == ["tool", "read_flow", '{"machine": "m1"}', "ran"] and texts[1][6] == '{"flow_lpm": 2.1}'
    assert texts[2][2] == "open_valve" and texts[2][4] == "waiting" and "above the maximum" in texts[2][5], texts[2]
    assert "pct 80 is above the maximum 50" in browser.find_element("css selector", "[data-field='waiting for']").text
    browser.save_screenshot(str(SCREENSHOTS / "agent-run.png"))


def approve_or_deny_in_browser(
    site: Any, node: NodeSide, browser: Any, approve: bool, reason: str
) -> tuple[str, float, ApprovalDecision]:
    from tests.fleet.console.test_console_browser import wait

    run_id, started = new_run_id(), time.time()
    node.publish(waiting_run(run_id, started))
    open_agents(browser, site, "olivia")
    wait(browser, lambda d: queue_row(d, run_id))
    assert orchestrator_lists(site, run_id), "the orchestrator never listed the waiting call"
    type_reason(browser, run_id, reason)
    click_in_row(browser, run_id, "button.approve" if approve else "button.deny")
    q = wait(browser, lambda d: (r := queue_row(d, run_id)) and "good" in r["outcomeClass"] and r)
    decision = node.decision(run_id)
    # retained: a node that was away finds it when it comes back
    late = node.retained(run_id)
    assert late and parse_payload(ApprovalDecision, late) == decision, "the decision is not retained"
    site_keys().verify(decision)  # signed with the site key, as it is
    with pytest.raises(SignatureError):  # and the signature covers the operator and the answer
        site_keys().verify(decision.model_copy(update={"operator": "mallory"}))
    assert (decision.node_id, decision.run_id, decision.step, decision.approve) == (NODE, run_id, 2, approve)
    assert "olivia" in decision.operator and decision.reason == reason, decision
    verb = "approved" if approve else "denied"
    q = wait(browser, lambda d: (r := queue_row(d, run_id)) and r["decided"] and r)
    assert q["decided"].startswith(f"{verb} by ") and "olivia" in q["decided"], q
    return run_id, started, decision


def test_approve_sends_a_signed_decision_naming_the_operator_and_the_queue_empties(
    site: Any, node: NodeSide, browser: Any
) -> None:
    from tests.fleet.console.test_console_browser import wait

    run_id, started, decision = approve_or_deny_in_browser(site, node, browser, True, "flow is low; open it")
    # the node's next report: the step approved and run; the run goes on, then ends
    by = f"approved by {decision.operator}"
    approved = tool_step(2, "open_valve", ARGS, "approved", result="published", detail=by)
    steps = [*waiting_run(run_id, started).steps[:2], approved]
    node.publish(
        AgentRunReport(
            node_id=NODE,
            run_id=run_id,
            rule="coolant",
            rule_version="1",
            trigger="sensors/m1/temp",
            state="running",
            steps=steps,
            started=started,
        )
    )
    wait(browser, lambda d: queue_row(d, run_id) is None)
    assert browser.find_element("id", "queue-empty").is_displayed()
    node.publish(
        AgentRunReport(
            node_id=NODE,
            run_id=run_id,
            rule="coolant",
            rule_version="1",
            trigger="sensors/m1/temp",
            state="done",
            reason="answered",
            answer="Valve opened.",
            steps=[*steps, model_step(3, "Valve opened.")],
            started=started,
            ended=time.time(),
        )
    )
    row = wait(browser, lambda d: (r := run_cells(d, run_id)) and r["state"] == "done" and r)
    assert row["steps"] == "4", row


def test_deny_with_a_reason(site: Any, node: NodeSide, browser: Any) -> None:
    from tests.fleet.console.test_console_browser import wait

    run_id, started, _ = approve_or_deny_in_browser(site, node, browser, False, "not during the night shift")
    denied = tool_step(2, "open_valve", ARGS, "denied", detail="denied by olivia")
    steps = [*waiting_run(run_id, started).steps[:2], denied]
    node.publish(
        AgentRunReport(
            node_id=NODE,
            run_id=run_id,
            rule="coolant",
            rule_version="1",
            trigger="sensors/m1/temp",
            state="running",
            steps=steps,
            started=started,
        )
    )
    wait(browser, lambda d: queue_row(d, run_id) is None)


def test_a_viewer_sees_the_queue_and_is_refused_with_the_reason_kept(site: Any, node: NodeSide, browser: Any) -> None:
    from tests.fleet.console.test_console_browser import wait

    run_id = new_run_id()
    node.publish(waiting_run(run_id, time.time()))
    open_agents(browser, site, "victor")
    wait(browser, lambda d: queue_row(d, run_id))
    assert browser.find_element("id", "viewer-note").is_displayed()
    type_reason(browser, run_id, "I think it is fine")
    click_in_row(browser, run_id, "button.approve")
    q = wait(browser, lambda d: (r := queue_row(d, run_id)) and "bad" in r["outcomeClass"] and r)
    assert "victor is a viewer" in q["outcome"], q
    assert q["reason"] == "I think it is fine", q
    assert node.decisions_on(run_id) == []  # the console refused before anything was sent


def test_bad_input_is_named_and_nothing_typed_is_lost(site: Any, node: NodeSide, browser: Any) -> None:
    from tests.fleet.console.test_console_browser import fetch_page, login_http, wait

    run_id = new_run_id()
    node.publish(waiting_run(run_id, time.time()))
    open_agents(browser, site, "olivia")
    wait(browser, lambda d: queue_row(d, run_id))
    assert orchestrator_lists(site, run_id)
    step = f"#approvals tr[data-run='{run_id}'] input[name=step]"
    for value, words in (("two", "step: step 'two' must be a whole number"), ("7", "refused (")):
        browser.execute_script(f'document.querySelector("{step}").value = arguments[0];', value)
        type_reason(browser, run_id, f"typed with step {value}")
        click_in_row(browser, run_id, "button.approve")
        q = wait(
            browser,
            lambda d, w=words: (r := queue_row(d, run_id)) and "bad" in r["outcomeClass"] and w in r["outcome"] and r,
        )
        assert q["reason"] == f"typed with step {value}", q
    # the orchestrator's own refusal names the step that does not wait
    assert "7" in q["outcome"], q
    assert node.decisions_on(run_id) == []
    # without script: the form posts, and the page comes back with the refusal and what was typed
    jar, csrf = login_http(site, "olivia")
    status, _, body = fetch_page(
        site, "/agents/deny", {"csrf_token": csrf, "node": NODE, "run_id": run_id, "step": "x", "reason": "kept"}, jar
    )
    assert status == 422, status
    view = json.loads(body.split('<script type="application/json" id="agents-view">')[1].split("</script>")[0])
    assert view["form"]["field"] == "step" and view["form"]["reason"] == "kept", view["form"]
    assert any(a["run_id"] == run_id for a in view["approvals"])


def test_an_expired_call_is_not_in_the_queue_and_runs_page(site: Any, node: NodeSide, browser: Any) -> None:
    from tests.fleet.console.test_console_browser import wait

    expired = new_run_id()
    node.publish(waiting_run(expired, time.time(), expires_in=-5))
    rule = f"paged{uuid.uuid4().hex[:6]}"
    ids = [new_run_id() for _ in range(12)]
    base = time.time()
    for i, rid in enumerate(ids):
        node.publish(
            AgentRunReport(
                node_id=NODE,
                run_id=rid,
                rule=rule,
                rule_version="1",
                trigger="request by olivia",
                state="done",
                reason="answered",
                started=base + i,
                ended=base + i + 0.5,
            )
        )
    open_agents(browser, site, "olivia")
    wait(browser, lambda d: run_cells(d, expired))
    assert queue_row(browser, expired) is None
    browser.find_element("id", "filter-rule").send_keys(rule)
    Select(browser.find_element("id", "page-size")).select_by_visible_text("10")
    browser.find_element("id", "filter-submit").click()
    wait(browser, lambda d: d.find_element("id", "page-info").text == "1–10 of 12")
    shown = browser.execute_script(SHOWN_RUNS)
    assert shown == ids[::-1][:10]  # newest first
    browser.find_element("id", "page-next").click()
    wait(browser, lambda d: d.find_element("id", "page-info").text == "11–12 of 12")
    shown = browser.execute_script(SHOWN_RUNS)
    assert shown == ids[::-1][10:]
    assert f"rule={rule}" in browser.current_url and "offset=10" in browser.current_url


# -- with a real node: its agent rule's act call waits, is approved in Chromium, and runs once ------------
REAL_NODE = "agents-ui"
REAL_MODEL = "qwen2.5-coder-0.5b-instruct"  # the bundled model that chooses tools well
RUN_S = 240  # a few 0.5B turns on one thread of a busy 2-core runner
TICKET = {
    "name": "open_ticket",
    "version": "1",
    "kind": "act",
    "description": "Open a maintenance ticket for a machine with a priority from 1 (low) to 5 (urgent).",
    "parameters": {
        "type": "object",
        "properties": {"machine": {"type": "string"}, "priority": {"type": "integer"}},
        "required": ["machine", "priority"],
    },
    "binding": {"type": "publish", "topic": "actions/tickets/{machine}"},
}
URGENT = {
    "name": "urgent",
    "version": "1",
    "trigger": {"type": "sensor", "topic_filter": "sensors/+/alarm", "variables": {"machine": "topic[1]"}},
    "goal": 'Machine {{ machine }} raised an alarm. Call open_ticket with machine "{{ machine }}" and priority 5. '
    "Then answer in one sentence.",
    "tools": ["open_ticket"],
    # tickets of priority 1-3 open by themselves; priority 5 waits for an operator
    "limits": {
        "max_steps": 3,
        "max_tokens": 96,
        "act": {"open_ticket": {"calls_per_hour": 10, "args": {"priority": {"minimum": 1, "maximum": 3}}}},
    },
}


FIRST_RUN_OF = (
    "const r = [...document.querySelectorAll('#runs tbody tr')].find((t) => t.dataset.node === arguments[0]);"
    "return r ? r.dataset.run : null;"
)


def harness_command(site: Any, op: str, **fields: Any) -> Any:
    """A command as the harness operator (the CLI's way), answered by the orchestrator."""
    from edgefleet.fleet.control import OrchestratorSession
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.proto.commands import Command

    session = OrchestratorSession(FleetSettings(mqtt_url=site.broker.url, site="lab"), connect_timeout=5)
    try:
        return session.call(Command(op=op, **fields), timeout=30)
    finally:
        session.close()


@pytest.fixture(scope="module")
def real_node(agent_site: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A node running the 0.5B model with the `urgent` agent rule, pushed through the orchestrator's commands."""
    from edgefleet.node.model_catalog import resolve_model
    from tests.conftest import NodeProcess
    from tests.mqtt_support import node_env

    site = agent_site[0]
    tmp = tmp_path_factory.mktemp("agents-node")
    model = str(resolve_model(REAL_MODEL, tmp / "model").path)
    proc = NodeProcess(tmp, node_id=REAL_NODE, env=node_env(site.broker, EDGEFLEET_MODEL=model))
    try:
        proc.wait_serving(timeout=180)
        for op, field, spec in (("set-tool", "tool", TICKET), ("set-agent", "agent", URGENT)):
            result = harness_command(site, op, target=f"node:{REAL_NODE}", **{field: spec})
            assert result.ok, result.message
        yield proc
    finally:
        proc.stop()


def test_approving_in_chromium_makes_a_real_node_run_the_call_once(site: Any, real_node: Any, browser: Any) -> None:
    from tests.fleet.console.test_console_browser import wait
    from tests.mqtt_support import Watcher

    actions = Watcher(site.broker, "actions/#")
    try:
        open_agents(browser, site, "olivia")
        actions.publish("sensors/m7/alarm", json.dumps({"id": "a-7"}).encode())
        # the node's run shows up live, then its call waits in the queue
        run_id = str(wait(browser, lambda d: d.execute_script(FIRST_RUN_OF, REAL_NODE), timeout=RUN_S))
        q = wait(browser, lambda d: queue_row(d, run_id), timeout=RUN_S)
        assert q["node"] == REAL_NODE and q["tool"] == "open_ticket", q
        assert json.loads(q["args"]) == {"machine": "m7", "priority": 5}, q
        assert "priority" in q["why"], q
        assert actions.on("actions/tickets/m7") == []  # nothing happens before an operator says so
        assert orchestrator_lists(site, run_id)
        type_reason(browser, run_id, "line stopped; ticket it")
        click_in_row(browser, run_id, "button.approve")
        wait(browser, lambda d: (r := queue_row(d, run_id)) is None or "good" in r["outcomeClass"])
        # the node takes the signed decision, runs the call once, and the queue empties
        wait(browser, lambda d: queue_row(d, run_id) is None, timeout=RUN_S)
        done = wait(
            browser, lambda d: (r := run_cells(d, run_id)) and r["state"] in ("done", "stopped") and r, timeout=RUN_S
        )
        assert done["state"] == "done", done
        published = actions.on("actions/tickets/m7")
        assert len(published) == 1, published
        assert published[0]["arguments"] == {"machine": "m7", "priority": 5}
        assert published[0]["idempotency_key"].startswith(f"{run_id}:")
        # its steps: the call approved, naming the operator who approved it in the console
        browser.get(f"{site.console.url}/agents/run/{run_id}")
        wait(
            browser,
            lambda d: any(c.text == "approved" for c in d.find_elements("css selector", "#steps tbody td.verdict")),
        )
        details = [c.text for c in browser.find_elements("css selector", "#steps tbody td.detail")]
        assert any("olivia" in t for t in details), details
    finally:
        actions.close()
