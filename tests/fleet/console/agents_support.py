"""Helpers of the agents page's browser tests: a site with a real node running agent rules, the
orchestrator asked as the harness operator, the page's rows read at once (they are redrawn live)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from edgefleet.fleet.control import OrchestratorSession
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.signing import KeyRing, load_public_keys
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.fleet.console.test_console_browser import login, wait

TOPICS = Topics.for_site("lab")


@contextmanager
def orchestrator(broker_url: str) -> Iterator[OrchestratorSession]:
    """The orchestrator as the harness operator (an admin) asks it, the CLI's way."""
    session = OrchestratorSession(FleetSettings(mqtt_url=broker_url, site="lab"), connect_timeout=5)
    try:
        yield session
    finally:
        session.close()


def command(broker_url: str, op: str, **fields: Any) -> CommandResult:
    with orchestrator(broker_url) as session:
        return session.call(Command(op=op, **fields), timeout=30)


def listed(broker_url: str, run_id: str, timeout: float = 30) -> dict[str, Any] | None:
    """The orchestrator's pending approval of `run_id` once its `approvals` holds it (it took the node's
    report in), else None. The orchestrator has no event a client could wait on for this: it is asked."""
    with orchestrator(broker_url) as session:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = session.call(Command(op="approvals"), timeout=5)
            found = [a for a in result.data.get("approvals", []) if a.get("run_id") == run_id] if result.ok else []
            if found:
                return found[0]
            time.sleep(0.1)
    return None


class Decisions:
    """Every decision the orchestrator publishes about `node`'s runs, as a client subscribed to them sees it."""

    def __init__(self, broker: Any, node: str) -> None:
        self.broker, self.node = broker, node
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.client = self._subscribed(self._on_message)

    def _subscribed(self, on_message: Any) -> mqtt.Client:
        ready = threading.Event()
        c = self.broker.client()
        c.on_connect = lambda cl, *_: cl.subscribe(TOPICS.node_agent_decisions(self.node), qos=1)
        c.on_subscribe = lambda *_: ready.set()
        c.on_message = on_message
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("could not subscribe to the decisions")
        return c

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.arrived.notify_all()

    def _about(self, run_id: str) -> list[bytes]:  # the caller holds `arrived`
        topic = TOPICS.agent_decisions(self.node, run_id)
        return [p for t, p in self.messages if t == topic and p]

    def on(self, run_id: str) -> list[bytes]:
        """The decisions about `run_id` received so far (a cleared retained message is no decision)."""
        with self.arrived:
            return self._about(run_id)

    def first(self, run_id: str, timeout: float = 20) -> bytes:
        """The first decision about `run_id`, once it arrives."""
        with self.arrived:
            self.arrived.wait_for(lambda: bool(self._about(run_id)), timeout)
            found = self._about(run_id)
        assert found, f"no decision about {run_id}"
        return found[0]

    def retained(self, run_id: str, timeout: float = 10) -> bytes:
        """What a client subscribing now finds retained about `run_id` (b"": nothing)."""
        got: list[bytes] = []
        done = threading.Event()
        topic = TOPICS.agent_decisions(self.node, run_id)

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            if m.retain and m.topic == topic:
                got.append(bytes(m.payload))
                done.set()

        c = self._subscribed(on_message)
        try:
            done.wait(timeout)
        finally:
            c.loop_stop()
            c.disconnect()
        return got[0] if got else b""

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def site_keys() -> KeyRing:
    return KeyRing(load_public_keys([site_identity.site().site_pub]))


# -- the page ---------------------------------------------------------------------------------------------
FIRST_RUN_OF = (
    "const r = [...document.querySelectorAll('#runs tbody tr')].find((t) => t.dataset.node === arguments[0]"
    " && !(arguments[1] || []).includes(t.dataset.run));"
    "return r ? r.dataset.run : null;"
)
SHOWN_RUNS = "return [...document.querySelectorAll('#runs tbody tr')].map((r) => r.dataset.run);"


def open_agents(browser: Any, site: Any, who: str) -> None:
    """The browser signed in as `who`, on the agents page, its stream live."""
    browser.get(site.console.url + "/login")
    browser.delete_all_cookies()
    login(browser, site, who)
    wait(browser, lambda d: urlparse(d.current_url).path == "/")
    browser.get(site.console.url + "/agents")
    wait(browser, lambda d: d.find_element("id", "live-mark").text.startswith("live"))


def queue_row(browser: Any, run_id: str, step: int | None = None) -> dict[str, Any] | None:
    """A queue row's texts (the run's first, or the one of `step`)."""
    return browser.execute_script(
        "const s = arguments[1] === null ? '' : `[data-step='${arguments[1]}']`;"
        "const r = document.querySelector(`#approvals tr[data-run='${arguments[0]}']${s}`); if (!r) return null;"
        "const c = r.cells; return {step: Number(r.dataset.step),"
        "node: c[0].textContent, rule: c[1].textContent, tool: c[2].textContent,"
        "args: c[3].textContent, why: c[4].textContent, expires: c[5].textContent,"
        "decided: r.querySelector('.decided-by').textContent, outcome: r.querySelector('.outcome').textContent,"
        "outcomeClass: r.querySelector('.outcome').className, reason: r.querySelector('input.reason').value};",
        run_id,
        step,
    )


def run_cells(browser: Any, run_id: str) -> dict[str, str] | None:
    return browser.execute_script(
        "const r = document.querySelector(`#runs tr[data-run='${arguments[0]}']`); if (!r) return null;"
        "const n = ['node','rule','state','reason','steps','started'];"
        "return Object.fromEntries([...r.cells].map((c, i) => [n[i], c.textContent]));",
        run_id,
    )


def row_css(run_id: str, step: int | None) -> str:
    return f"#approvals tr[data-run='{run_id}']" + ("" if step is None else f"[data-step='{step}']")


def click_in_row(browser: Any, run_id: str, css: str, step: int | None = None) -> None:
    browser.find_element("css selector", f"{row_css(run_id, step)} {css}").click()


def type_reason(browser: Any, run_id: str, text: str, step: int | None = None) -> None:
    box = browser.find_element("css selector", f"{row_css(run_id, step)} input.reason")
    box.clear()
    box.send_keys(text)
