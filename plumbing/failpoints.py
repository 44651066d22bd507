"""Named fail points: places in the code where a test can make a real process fail on purpose.

Like TiKV's fail-rs or FreeBSD's fail points: each point is a name at a spot in the code
(`failpoints.hit("engine.step")`), a no-op unless the environment variable EDGEFLEET_FAILPOINTS,
read once when the process starts, switches it on:

    EDGEFLEET_FAILPOINTS="engine.step=raise-after:5;sink.deliver=raise"

Actions:
- `raise`          raise FailPointError every time the point is passed;
- `raise-after:N`  pass N times, then raise every time after;
- `raise-once-after:N`  pass N times, raise once, then pass again;
- `sleep:MS`       sleep MS milliseconds each time (a slow disk, a slow handler);
- `off`            nothing (the same as not naming the point).

A point announces itself when it acts: a log line "fail point acting" with `failpoint=NAME`
before it sleeps or raises, so a test waits for that line instead of guessing with the clock.

A bad specification stops the process at start with a message naming the entry: a fault test that
silently tests nothing would pass for the wrong reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "EDGEFLEET_FAILPOINTS"


class FailPointError(RuntimeError):
    """Raised by a switched-on fail point; stands for any unexpected failure at that spot."""


@dataclass
class _Point:
    action: str
    arg: int
    hits: int = 0


def parse(spec: str) -> dict[str, _Point]:
    """`name=action[:arg];…` → points. Raises ValueError naming the entry that is wrong."""
    points: dict[str, _Point] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, sep, action = entry.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name or not action:
            raise ValueError(f"{ENV} entry {entry!r} must be name=action (e.g. engine.step=raise-after:5)")
        kind, _, arg = action.partition(":")
        if kind in ("raise", "off"):
            if arg:
                raise ValueError(f"{ENV} entry {entry!r}: {kind} takes no argument")
            points[name] = _Point(kind, 0)
        elif kind in ("raise-after", "raise-once-after", "sleep"):
            if not arg.isdigit():
                raise ValueError(f"{ENV} entry {entry!r}: {kind} needs a whole number, e.g. {kind}:5")
            points[name] = _Point(kind, int(arg))
        else:
            raise ValueError(
                f"{ENV} entry {entry!r}: unknown action {kind!r} "
                "(raise, raise-after:N, raise-once-after:N, sleep:MS, off)"
            )
    return points


_lock = threading.Lock()
_points: dict[str, _Point] = {}


def configure(spec: str) -> None:
    """Replace every point with those of `spec`; ValueError (and no change) when it is wrong."""
    global _points
    parsed = parse(spec)
    with _lock:
        _points = parsed


def load_env() -> list[str]:
    """Read EDGEFLEET_FAILPOINTS (each entry point calls this once at start); the points switched on."""
    configure(os.environ.get(ENV, ""))
    return active()


def active() -> list[str]:
    return sorted(name for name, p in _points.items() if p.action != "off")


def hit(name: str) -> None:
    """Pass the fail point `name`: nothing unless it is switched on."""
    if not _points:  # the common case: one dict lookup, no lock
        return
    point = _points.get(name)
    if point is None or point.action == "off":
        return
    with _lock:
        point.hits += 1
        n = point.hits
    if point.action == "sleep":
        _announce(name, point, n)
        time.sleep(point.arg / 1000)
    elif point.action == "raise" or (point.action == "raise-after" and n > point.arg):
        _announce(name, point, n)
        raise FailPointError(f"fail point {name} ({point.action}{':' + str(point.arg) if point.arg else ''})")
    elif point.action == "raise-once-after" and n == point.arg + 1:
        _announce(name, point, n)
        raise FailPointError(f"fail point {name} (raise-once-after:{point.arg})")


def _announce(name: str, point: _Point, hits: int) -> None:
    log.warning("fail point acting", extra={"failpoint": name, "action": point.action, "hits": hits})
