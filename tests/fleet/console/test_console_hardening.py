"""The console against hostile clients, and what it tells about insecure nodes: a real console
process over HTTPS (the test site's certificate) on a real Mosquitto. Each login test speaks from
its own loopback address (127.0.0.x: Linux routes the whole 127/8 to lo), so the per-address limits
of one test do not reach another."""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus
from edgefleet.proto.topics import Topics
from tests.fleet.console.conftest import PASSWORD, SCREENSHOTS, ConsoleProcess
from tests.mqtt_support import Mosquitto

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def console(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    c = ConsoleProcess(tmp_path_factory.mktemp("console"), broker)
    try:
        yield c
    finally:
        c.stop()


class Client:
    """One browser-like client at a chosen source address: its own TLS connection and cookies."""

    def __init__(self, console: ConsoleProcess, source: str) -> None:
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", console.port, context=console.ssl, source_address=(source, 0), timeout=60
        )

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, Location, body); redirects are not followed."""
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = urlencode(form).encode() if form is not None else None
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body, headers)
        r = self.conn.getresponse()
        text = r.read().decode()
        for header in r.headers.get_all("Set-Cookie") or []:
            self.cookies.update({k: m.value for k, m in SimpleCookie(header).items()})
        return r.status, r.headers.get("Location", ""), text

    def login_form(self) -> str:
        """Open the login page the way a browser does; its CSRF token."""
        status, _, page = self.request("GET", "/login")
        assert status == 200, status
        return page.split('name="login_csrf" value="')[1].split('"')[0]

    def login(self, name: str, password: str, next_path: str = "/", token: str = "") -> tuple[int, str, str]:
        token = token or self.login_form()
        return self.request(
            "POST", "/login", {"name": name, "password": password, "login_csrf": token, "next": next_path}
        )


def test_a_guesser_does_not_lock_the_operator_out(console: ConsoleProcess) -> None:
    """Finding 2: five failures for a name locked that name out for everyone, the real operator too."""
    attacker = Client(console, "127.0.0.2")
    statuses = [attacker.login("olivia", "a wrong guess")[0] for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2, statuses
    status, where, _ = Client(console, "127.0.0.3").login("olivia", PASSWORD)
    assert (status, where) == (303, "/"), status
    assert attacker.login("olivia", PASSWORD)[0] == 429  # the guesser's address stays refused


def test_one_address_guessing_many_names_is_stopped(console: ConsoleProcess) -> None:
    guesser = Client(console, "127.0.0.4")
    statuses = [guesser.login(f"user-{i}", "a wrong guess")[0] for i in range(21)]
    assert statuses == [401] * 20 + [429], statuses  # 4 x 5 per address in a minute


def test_guesses_sent_at_once_are_counted_before_their_hashes(console: ConsoleProcess) -> None:
    """Finding 1: the limit was checked before any guess in flight had failed, so guesses sent at
    once all reached Argon2id. Now each is counted before its hash: five are checked, the rest refused."""
    clients = [Client(console, "127.0.0.5") for _ in range(24)]
    tokens = [c.login_form() for c in clients]  # TLS and the form first, so the posts leave together
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def guess(c: Client, token: str) -> None:
        start.wait()
        statuses.append(c.login("olivia", "a wrong guess", token=token)[0])

    threads = [threading.Thread(target=guess, args=ct) for ct in zip(clients, tokens, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Counter(statuses) == {401: 5, 429: 19}, Counter(statuses)


def answer_of(tls: socket.socket) -> bytes:
    """The head of an HTTP answer and its body (Content-Length), or what came before the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")) if k.lower() == b"content-length"),
        0,
    )
    while len(body) < length and (chunk := tls.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 524288000\r\n", b"Transfer-Encoding: chunked\r\n"],
    ids=["announced-500-MiB", "chunked"],
)
def test_a_large_login_body_is_refused_before_it_arrives(console: ConsoleProcess, framing: bytes) -> None:
    """Finding 1: /login took up to 512 MiB before looking at it. Only 8 KiB is sent here, and the
    rest never comes: the console must answer 413 on what it has, not wait for the whole body."""
    head = b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    part = b"name=" + b"a" * 8187
    if framing.startswith(b"Transfer"):
        part = b"%x\r\n" % len(part) + part + b"\r\n"
    raw = socket.create_connection(("127.0.0.1", console.port), timeout=20, source_address=("127.0.0.6", 0))
    assert console.ssl is not None
    with console.ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(head + framing + b"\r\n" + part)
        answer = answer_of(tls).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "a login form is at most 4096 bytes" in answer, answer[-300:]
    assert Client(console, "127.0.0.6").login("olivia", PASSWORD)[0] == 303  # and it goes on serving


def test_a_small_login_form_with_a_long_name_is_still_read(console: ConsoleProcess) -> None:
    status, _, page = Client(console, "127.0.0.7").login("x" * 3000, "a wrong guess")
    assert status == 401 and "wrong name or password" in page


@pytest.mark.parametrize("hostile", ["/\\evil.example", "//evil.example", "https://evil.example", "/\\\\evil"])
def test_login_never_redirects_off_the_console(console: ConsoleProcess, hostile: str) -> None:
    """Finding 3: `next=/\\evil.example` passed the check, and browsers read `/\\` as `//`."""
    client = Client(console, "127.0.0.8")
    _, _, page = client.request("GET", "/login?" + urlencode({"next": hostile}))
    assert 'name="next" value="/"' in page
    status, where, _ = client.login("olivia", PASSWORD, next_path=hostile)
    assert (status, where) == (303, "/")


def test_login_goes_on_to_the_page_asked_for(console: ConsoleProcess) -> None:
    status, where, _ = Client(console, "127.0.0.8").login("olivia", PASSWORD, next_path="/templates?x=1")
    assert (status, where) == (303, "/templates?x=1")


def test_the_console_log_names_no_password(console: ConsoleProcess) -> None:
    assert PASSWORD not in console.log() and "a wrong guess" not in console.log()


def test_the_fleet_page_flags_a_node_running_insecure(console: ConsoleProcess, broker: Mosquitto, browser: Any) -> None:
    """Two nodes' own status messages, one from a node started with EDGEFLEET_INSECURE: only that
    one carries the "insecure" badge on the fleet page."""
    topics = Topics.for_site("lab")
    info = NodeInfoPayload(profile="x86-dev", groups=["line-a"], model=ModelRef(name="m"))
    client = broker.client("hardening-test")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for node_id, insecure in (("edge-open", True), ("edge-closed", False)):
            status = NodeStatus(node_id=node_id, state="online", info=info.model_copy(update={"insecure": insecure}))
            client.publish(topics.node_status(node_id), status.dumps(), qos=1, retain=True).wait_for_publish(10)
        browser.get(console.url + "/login")
        browser.find_element(By.ID, "name").send_keys("victor")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login-submit").click()
        badge = 'tr[data-node="{}"] .mark.insecure'
        WebDriverWait(browser, 20, poll_frequency=0.05).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, badge.format("edge-open"))
                and d.find_elements(By.CSS_SELECTOR, 'tr[data-node="edge-closed"]')
            )
        )
        assert browser.find_element(By.CSS_SELECTOR, badge.format("edge-open")).text == "insecure"
        assert not browser.find_elements(By.CSS_SELECTOR, badge.format("edge-closed"))
        browser.save_screenshot(str(SCREENSHOTS / "fleet-insecure.png"))
    finally:
        for node_id in ("edge-open", "edge-closed"):
            client.publish(topics.node_status(node_id), b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
