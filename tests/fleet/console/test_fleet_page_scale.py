"""The fleet page at 1,000 nodes, in a real Chromium: a real console process on a real Mosquitto, and
1,000 simulated nodes that speak only the MQTT contract (retained `NodeStatus` births with their info,
`Telemetry`), published by a plain paho client from the contract's own payload models.

The page opens with the summary and one page of rows; filters, search, sort and paging are answered by
the console with that page only; while every node sends telemetry the browser's live stream stays at
a couple of events a second. The figures are printed (`pytest -s`); the assertions are generous bounds
that prove "one page, not the fleet" and "batched, not one event per message", not timings.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.fleet.console.conftest import PASSWORD, SCREENSHOTS, ConsoleProcess
from tests.mqtt_support import Mosquitto

pytestmark = pytest.mark.timeout(300)
T = Topics.for_site("lab")
NODES = 1000
PAGE = 50
MAX_RESPONSE_BYTES = 100_000  # a page of 50 rows is ~20 KB; the whole fleet would be ~400 KB
NODE_ID = re.compile(r"sim-\d{4}")


def node_id(i: int) -> str:
    return f"sim-{i:04d}"


def state_of(i: int) -> str:
    return "failed" if i % 97 == 5 else "offline" if i % 10 == 3 else "online"


def throttled_of(i: int) -> bool:
    return i % 25 == 7


def telemetry(i: int, queue: int | None = None) -> bytes:
    return Telemetry(
        node_id=node_id(i),
        queue_depth=i % 3 if queue is None else queue,
        slots_busy=i % 5,
        slots_total=4 + i % 5,
        slots_available=4,
        tokens_per_second=10.0 + i % 7,
        temperature_c=40.0 + i % 30,
        throttled=throttled_of(i),
        shedding=False,
        rss_bytes=(200 + i % 100) * 2**20,
    ).dumps()


class SimulatedNodes:
    """1,000 nodes at the MQTT contract from one paho client: births (retained, QoS 1) and telemetry."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = broker.client("sim-fleet")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.online = [i for i in range(NODES) if state_of(i) == "online"]

    def announce(self) -> None:
        sent = []
        for i in range(NODES):
            info = NodeInfoPayload(
                profile=f"sim-{i % 3}",
                groups=[f"line-{i % 8}"],
                model=ModelRef(name="sim-model"),
                grpc_address=f"10.0.{i // 250}.{i % 250}:50051",
            )
            status = NodeStatus(node_id=node_id(i), state=state_of(i), info=info)  # type: ignore[arg-type]
            sent.append(self.client.publish(T.node_status(node_id(i)), status.dumps(), qos=1, retain=True))
        for m in sent:
            m.wait_for_publish(30)
        self.beat()

    def beat(self, queue: int | None = None) -> None:
        for i in self.online:
            self.client.publish(T.node_telemetry(node_id(i)), telemetry(i, queue), qos=0)

    def clear(self) -> None:
        sent = [self.client.publish(T.node_status(node_id(i)), b"", qos=1, retain=True) for i in range(NODES)]
        for m in sent:
            m.wait_for_publish(30)
        self.client.loop_stop()
        self.client.disconnect()


class Http:
    """A signed-in HTTP client of the console (cookie jar), the way a script would be."""

    def __init__(self, console: ConsoleProcess) -> None:
        self.console = console
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.HTTPSHandler(context=console.ssl),
        )
        page = self.get("/login")[1].decode()
        token = page.split('name="login_csrf" value="')[1].split('"')[0]
        form = {"name": "victor", "password": PASSWORD, "login_csrf": token, "next": "/templates"}
        self.get("/login", urllib.parse.urlencode(form).encode())

    def get(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            with self.opener.open(self.console.url + path, body, timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def rows(self, query: str = "") -> dict[str, Any]:
        status, body = self.get(f"/fleet/rows?{query}")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]


@dataclass
class Scale:
    broker: Mosquitto
    nodes: SimulatedNodes
    console: ConsoleProcess
    http: Http


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    """The site is up with 1,000 nodes when the console starts: it learns them from retained births."""
    tmp = tmp_path_factory.mktemp("console-scale")
    broker = Mosquitto(tmp)
    nodes = SimulatedNodes(broker)
    console = None
    try:
        started = time.monotonic()
        nodes.announce()
        print(f"\n[console at {NODES} nodes] births published in {time.monotonic() - started:.2f} s")
        console = ConsoleProcess(tmp, broker)
        started = time.monotonic()
        http = Http(console)
        assert wait_for(lambda: http.rows()["summary"]["nodes"] == NODES, timeout=30), http.rows()["summary"]
        print(f"[console at {NODES} nodes] console lists all of them {time.monotonic() - started:.2f} s after start")
        nodes.beat()  # telemetry is not retained: the console has each node's once it has been sent again
        assert wait_for(lambda: http.rows()["summary"]["throttled"] == expected_summary()["throttled"], timeout=20)
        yield Scale(broker, nodes, console, http)
    finally:
        if console is not None:
            console.stop()
        nodes.clear()
        broker.stop()


def expected_summary() -> dict[str, int]:
    states = [state_of(i) for i in range(NODES)]
    return {
        "nodes": NODES,
        **{s: states.count(s) for s in ("online", "offline", "failed")},
        "throttled": sum(1 for i in range(NODES) if states[i] == "online" and throttled_of(i)),
    }


def test_a_script_gets_one_page_and_the_summary_and_bad_parameters_are_named(scale: Scale) -> None:
    view = scale.http.rows()
    assert view["total"] == NODES and len(view["rows"]) == PAGE
    assert [r["node_id"] for r in view["rows"]] == [node_id(i) for i in range(PAGE)]
    assert {k: view["summary"][k] for k in expected_summary()} == expected_summary()
    wide = scale.http.rows("limit=200&offset=950&sort=tps&desc=1")
    assert wide["total"] == NODES and len(wide["rows"]) == 50 and wide["offset"] == 950
    group = scale.http.rows("group=line-3&state=offline")
    assert group["total"] == sum(1 for i in range(NODES) if i % 8 == 3 and state_of(i) == "offline")
    assert scale.http.rows("q=SIM-0042")["total"] == 1
    for query, named in (("limit=1000", "limit"), ("state=sleeping", "state"), ("sort=color", "sort")):
        status, body = scale.http.get(f"/fleet/rows?{query}")
        assert status == 400 and body.decode().startswith(f"refused: {named}:"), (query, status, body)
    status, page = scale.http.get("/")
    assert status == 200 and len(page) < MAX_RESPONSE_BYTES
    assert len(set(NODE_ID.findall(page.decode()))) == PAGE, "the page holds its 50 rows, not the fleet"


def login(browser: Any, console: ConsoleProcess) -> None:
    browser.get(console.url + "/login")
    browser.delete_all_cookies()
    browser.get(console.url + "/login")
    browser.find_element(By.ID, "name").send_keys("olivia")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr"))


def timed(browser: Any, act: str, until: str) -> float:
    """Milliseconds from running `act` (JS statements) until `until` (a JS expression) holds, checked on
    every change of the page: what the operator waits for."""
    return float(
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"const until = () => {{ try {{ return {until}; }} catch (e) {{ return false; }} }};"
            "const t0 = performance.now();"
            "const finish = () => { obs.disconnect(); done(performance.now() - t0); };"
            "const obs = new MutationObserver(() => { if (until()) finish(); });"
            "obs.observe(document.querySelector('main'), {childList: true, subtree: true, characterData: true});"
            f"{act};"
            "if (until()) finish();"
        )
    )


ROWS = "[...document.querySelectorAll('#fleet-table tbody tr')]"
INFO = "document.getElementById('page-info').textContent"
TPS = "document.querySelector(\"th[data-sort='tps']\")"


def put(element: str, value: str) -> str:
    return f"document.getElementById('{element}').value = '{value}'"


def fire(element: str, event: str) -> str:
    return f"document.getElementById('{element}').dispatchEvent(new Event('{event}'))"


def network(browser: Any) -> tuple[dict[str, tuple[str, int]], list[tuple[float, str]]]:
    """From Chromium's performance log: each finished response (url, bytes on the wire) and each
    server-sent event (time in ms, data)."""
    urls: dict[str, str] = {}
    done: dict[str, tuple[str, int]] = {}
    events: list[tuple[float, str]] = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        p = msg.get("params", {})
        if msg["method"] == "Network.responseReceived":
            urls[p["requestId"]] = p["response"]["url"]
        elif msg["method"] == "Network.loadingFinished" and p["requestId"] in urls:
            done[p["requestId"]] = (urls[p["requestId"]], int(p["encodedDataLength"]))
        elif msg["method"] == "Network.eventSourceMessageReceived":
            events.append((float(entry["timestamp"]), p["data"]))
    return done, events


def test_the_fleet_page_loads_and_filters_with_one_page_at_a_time(scale: Scale, browser: Any) -> None:
    console = scale.console
    login(browser, console)
    browser.get_log("performance")
    browser.set_script_timeout(30)
    loads = []
    for _ in range(3):
        browser.get(console.url + "/")
        WebDriverWait(browser, 20, poll_frequency=0.01).until(
            lambda d: d.execute_script(f"return {ROWS}.length") == PAGE
        )
        loads.append(
            browser.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return [n.responseEnd, n.domContentLoadedEventEnd, n.encodedBodySize];"
            )
        )
    summary = {k: browser.find_element(By.CSS_SELECTOR, f'#summary [data-sum="{k}"]').text for k in expected_summary()}
    assert summary == {k: str(v) for k, v in expected_summary().items()}
    assert browser.execute_script(f"return {INFO}") == f"1–{PAGE} of {NODES}"
    browser.save_screenshot(str(SCREENSHOTS / "fleet-1000.png"))

    offline = expected_summary()["offline"]
    throttled_line_7 = sum(1 for i in range(NODES) if i % 8 == 7 and state_of(i) == "online" and throttled_of(i))
    steps = {
        "state = offline": (
            f"{put('filter-state', 'offline')}; {fire('filter-state', 'change')}",
            f"{INFO} === '1–{PAGE} of {offline}' && {ROWS}.every((r) => r.dataset.state === 'offline')",
        ),
        "next page": (
            "document.getElementById('page-next').click()",
            f"{INFO} === '{PAGE + 1}–{min(2 * PAGE, offline)} of {offline}'",
        ),
        "search sim-0042 (all states; includes the 150 ms typing pause)": (
            f"{put('filter-state', '')}; {put('search', 'sim-0042')}; {fire('search', 'input')}",
            f"{INFO} === '1–1 of 1' && {ROWS}.length === 1 && {ROWS}[0].dataset.node === 'sim-0042'",
        ),
        "group line-7 + throttled": (
            f"{put('search', '')}; {put('filter-group', 'line-7')}; {put('filter-state', 'throttled')};"
            f"{fire('filter-group', 'change')}",
            f"{INFO} === '1–{throttled_line_7} of {throttled_line_7}'",
        ),
        "sort by tokens/s, all nodes": (
            f"{put('filter-group', '')}; {put('filter-state', '')}; {TPS}.click(); {TPS}.click()",
            f"{INFO} === '1–{PAGE} of {NODES}' && {ROWS}[0].querySelector('.tps').textContent === '16.0'",
        ),
    }
    took = {name: timed(browser, act, until) for name, (act, until) in steps.items()}
    assert "sort=tps" in browser.current_url and "desc=1" in browser.current_url  # a link keeps the view

    responses, events = network(browser)
    largest = max(responses.values(), key=lambda r: r[1])
    for url, size in responses.values():
        assert size < MAX_RESPONSE_BYTES, f"{url} is {size} bytes"
    for _, data in events:
        assert len(set(NODE_ID.findall(data))) <= PAGE, "a live event names more nodes than the page shows"
    print(
        f"[console at {NODES} nodes] fleet page load (navigation → {PAGE} rows and the summary drawn): "
        f"median {statistics.median(x[1] for x in loads):.0f} ms (runs: {', '.join(f'{x[1]:.0f}' for x in loads)}); "
        f"HTML {loads[0][2] / 1024:.1f} KiB, answered in {statistics.median(x[0] for x in loads):.0f} ms"
    )
    print(
        f"[console at {NODES} nodes] filter → table shows the console's answer: "
        + "; ".join(f"{k} {v:.0f} ms" for k, v in took.items())
    )
    print(
        f"[console at {NODES} nodes] {len(responses)} responses, largest {largest[1] / 1024:.1f} KiB "
        f"({urllib.parse.urlparse(largest[0]).path}); {len(events)} live events, largest "
        f"{max((len(d) for _, d in events), default=0) / 1024:.1f} KiB"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_live_updates_stay_batched_while_every_node_talks(scale: Scale, browser: Any) -> None:
    console, nodes = scale.console, scale.nodes
    login(browser, console)
    browser.get(console.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "live-mark").text.startswith("live"))
    browser.get_log("performance")
    seconds, rate = 6, 1.0  # every online node sends telemetry every second: ~880 messages a second
    stop = threading.Event()

    def storm() -> None:
        n = 0
        while not stop.is_set():
            nodes.beat(queue=n % 3)
            n += 1
            stop.wait(rate)

    cpu0, wall0 = cpu_seconds(console.proc.pid), time.monotonic()
    t = threading.Thread(target=storm, daemon=True)
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(10)
    cpu = (cpu_seconds(console.proc.pid) - cpu0) / (time.monotonic() - wall0)
    # one marked telemetry of a node on the page: how long until the browser shows it
    browser.execute_script(
        "window.__seen = null; const body = document.querySelector('#fleet-table tbody');"
        "new MutationObserver(() => { const c = document.querySelector(\"tr[data-node='sim-0001'] .queue\");"
        " if (c && c.textContent === '4242' && !window.__seen) window.__seen = Date.now(); })"
        ".observe(body, {childList: true, subtree: true, characterData: true});"
    )
    sent = time.time()
    nodes.client.publish(T.node_telemetry(node_id(1)), telemetry(1, queue=4242), qos=0)
    seen = WebDriverWait(browser, 10, poll_frequency=0.02).until(lambda d: d.execute_script("return window.__seen"))
    _, events = network(browser)
    window = [ts for ts, _ in events if ts <= sent * 1000]
    span = seconds
    per_s = len(window) / span
    sizes = [len(d) for _, d in events]
    print(
        f"[console at {NODES} nodes] {len(nodes.online)} nodes × telemetry at {1 / rate:.0f} Hz for {seconds} s: "
        f"{len(window)} live events to the browser ({per_s:.1f}/s), {sum(sizes) / span / 1024:.1f} KiB/s, "
        f"largest {max(sizes, default=0) / 1024:.1f} KiB; console CPU {100 * cpu:.0f} % of a core; "
        f"a change on the page shown {seen - sent * 1000:.0f} ms after it was published"
    )
    assert window, "the page got no live change while every node talked"
    assert per_s <= 3, f"{per_s:.1f} live events a second: the stream is not batched"
    for data in (d for _, d in events):
        assert len(set(NODE_ID.findall(data))) <= PAGE
