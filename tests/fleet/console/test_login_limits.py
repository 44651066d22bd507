"""The console's login limits as plain objects: the failure limiter, where a login may go next,
the address a client is counted under, and the fleet row's `insecure` flag."""

from __future__ import annotations

import pytest

from edgefleet.fleet.console.live_fleet import runs_insecure
from edgefleet.fleet.console.login_limits import LoginLimiter, client_address, safe_next
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(limiter: LoginLimiter, address: str, name: str, times: int) -> list[float]:
    """`times` wrong passwords: what `begin` answered each time (0: the password was checked)."""
    return [limiter.begin(address, name) for _ in range(times)]


def test_a_guesser_cannot_lock_the_operator_out_from_another_address() -> None:
    limiter = LoginLimiter(5, window_s=60)
    waits = fail(limiter, "203.0.113.9", "admin", 7)
    assert waits[:5] == [0] * 5 and all(w > 0 for w in waits[5:]), waits
    assert limiter.retry_after("203.0.113.9", "admin") > 0
    assert limiter.begin("198.51.100.7", "admin") == 0  # the operator, elsewhere


def test_one_address_is_stopped_across_names_at_four_times_the_limit() -> None:
    limiter = LoginLimiter(2, window_s=60)
    waits = [limiter.begin("203.0.113.9", f"name-{i}") for i in range(9)]
    assert waits[:8] == [0] * 8 and waits[8] > 0, waits
    assert limiter.begin("198.51.100.7", "name-0") == 0


def test_an_attempt_counts_before_its_password_is_checked_and_a_success_takes_it_back() -> None:
    limiter = LoginLimiter(3, window_s=60)
    # three checks begun at once, none finished: the fourth must wait, not start a fourth hash
    assert fail(limiter, "10.0.0.1", "olivia", 3) == [0, 0, 0]
    assert limiter.begin("10.0.0.1", "olivia") > 0
    for _ in range(3):
        limiter.succeeded("10.0.0.1", "olivia")
    assert limiter.retry_after("10.0.0.1", "olivia") == 0 and len(limiter) == 0


def test_failures_leave_the_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(2, window_s=60, clock=clock)
    fail(limiter, "10.0.0.1", "olivia", 2)
    clock.now += 30
    assert limiter.retry_after("10.0.0.1", "olivia") == pytest.approx(30)
    clock.now += 30
    assert limiter.begin("10.0.0.1", "olivia") == 0  # no lockout that lasts
    clock.now += 61
    assert limiter.retry_after("10.0.0.1", "olivia") == 0 and len(limiter) == 0


def test_the_tables_stay_bounded_under_a_flood_of_names_and_addresses() -> None:
    limiter = LoginLimiter(5, window_s=60, max_keys=100)
    for i in range(5000):
        limiter.begin(f"10.0.{i // 250}.{i % 250}", f"name-{i}")
    assert len(limiter) <= 100
    # the newest entries are the ones kept: the latest guesser is still counted
    fail(limiter, "203.0.113.9", "admin", 5)
    for i in range(20):
        limiter.begin("10.1.0.1", f"other-{i % 3}")
    assert len(limiter) <= 100 and limiter.retry_after("203.0.113.9", "admin") > 0


def test_the_limiter_refuses_settings_it_cannot_work_with() -> None:
    with pytest.raises(ValueError, match="attempts"):
        LoginLimiter(0)


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example",
        "/\\evil.example",
        "/\\\\evil.example",
        "\\/evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "\t/evil.example",
        "/\t/evil.example",
        "/ok\\..\\evil",
        "/\r\nLocation: https://evil.example",
        "/a b",
        "/caf\u00e9",
        "evil.example",
        "",
        "/" + "a" * 5000,
    ],
)
def test_a_hostile_next_goes_home(value: str) -> None:
    assert safe_next(value) == "/"


@pytest.mark.parametrize(
    "value", ["/", "/templates", "/node/edge-1?tab=plots#x", "/%2F%2Fevil.example", "/%0a/evil", "/%5Cevil"]
)
def test_a_path_on_the_console_is_kept(value: str) -> None:
    """Percent-encoded characters stay inside the path: the browser asks this console for it."""
    assert safe_next(value) == value


def test_clients_are_counted_by_address_and_an_ipv6_host_by_its_slash_64() -> None:
    assert client_address("127.0.0.2") == "127.0.0.2"
    assert client_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_address("2001:db8:1:2::1") == client_address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_address(None) == "-"


def test_a_node_running_insecure_is_flagged() -> None:
    info = NodeInfoPayload(profile="x86-dev", groups=[], model=ModelRef(name="m"))
    assert runs_insecure(NodeStatus(node_id="a", state="online", info=info)) is False
    assert runs_insecure(NodeStatus(node_id="a", state="offline")) is False
    flagged = info.model_copy(update={"insecure": True})
    assert runs_insecure(NodeStatus(node_id="a", state="online", info=flagged)) is True
