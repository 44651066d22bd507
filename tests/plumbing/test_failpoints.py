"""Fail points: off unless named, each action does what it says, a wrong setting is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edgefleet.plumbing import failpoints
from edgefleet.plumbing.failpoints import FailPointError


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    failpoints.configure("")


def test_an_unnamed_point_does_nothing() -> None:
    failpoints.configure("other.point=raise")
    for _ in range(3):
        failpoints.hit("engine.step")


def test_raise_after_passes_n_times_then_raises_every_time() -> None:
    failpoints.configure("engine.step=raise-after:2")
    failpoints.hit("engine.step")
    failpoints.hit("engine.step")
    for _ in range(2):
        with pytest.raises(FailPointError, match=r"engine\.step"):
            failpoints.hit("engine.step")


def test_raise_once_after_raises_exactly_once() -> None:
    failpoints.configure("engine.emit=raise-once-after:1")
    failpoints.hit("engine.emit")
    with pytest.raises(FailPointError):
        failpoints.hit("engine.emit")
    failpoints.hit("engine.emit")
    failpoints.hit("engine.emit")


def test_sleep_and_off_and_several_points() -> None:
    failpoints.configure("a=sleep:50; b=off ;c=raise")
    t0 = time.monotonic()
    failpoints.hit("a")
    assert time.monotonic() - t0 >= 0.045
    failpoints.hit("b")
    with pytest.raises(FailPointError):
        failpoints.hit("c")
    assert failpoints.active() == ["a", "c"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("engine.step", "must be name=action"),
        ("engine.step=explode", "unknown action 'explode'"),
        ("engine.step=raise-after:x", "needs a whole number"),
        ("engine.step=raise:3", "takes no argument"),
    ],
)
def test_a_wrong_setting_is_refused_with_the_entry_named(spec: str, message: str) -> None:
    failpoints.configure("keep=raise")
    with pytest.raises(ValueError, match=message):
        failpoints.configure(spec)
    assert failpoints.active() == ["keep"], "a refused setting changes nothing"


def test_load_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "x.y=raise-after:1")
    assert failpoints.load_env() == ["x.y"]


def test_a_point_announces_itself_when_it_acts_and_only_then(caplog: pytest.LogCaptureFixture) -> None:
    failpoints.configure("a=sleep:1;b=raise-after:1")
    with caplog.at_level("WARNING", logger=failpoints.__name__):
        failpoints.hit("b")  # passes: no word
        failpoints.hit("a")
        with pytest.raises(FailPointError):
            failpoints.hit("b")
    acting = [(r.getMessage(), getattr(r, "failpoint", None)) for r in caplog.records]
    assert acting == [("fail point acting", "a"), ("fail point acting", "b")]
