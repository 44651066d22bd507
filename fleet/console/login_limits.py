"""What the console's login accepts before it spends work on a guess.

- The form: at most `LOGIN_MAX_BYTES`, refused with 413 while it is still arriving, before it is parsed.
- Failed logins: counted per client address and per (address, name) in a sliding window, never per
  name alone, so a guesser at one address cannot lock the operator out at another. An attempt is
  counted before its password hash is computed (a success takes it back), so many guesses sent at
  once cannot all pass the check before the first one fails. The tables are bounded: past
  `max_keys` the entry changed longest ago goes.
- Where a login goes next: a path on this console only (`safe_next`), else `/`.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

LOGIN_MAX_BYTES = 4096
MAX_NEXT_CHARS = 2048
TOO_LARGE = (
    f"refused: a login form is at most {LOGIN_MAX_BYTES} bytes; send only the name, the password and "
    "the form's hidden fields"
)


async def read_login_form(request: web.Request) -> dict[str, str]:
    """The posted form's text fields, read only up to LOGIN_MAX_BYTES (413 with TOO_LARGE past that)."""
    if request.content_length is not None and request.content_length > LOGIN_MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(LOGIN_MAX_BYTES, request.content_length, text=TOO_LARGE)
    try:
        # a body without a length (chunked) stops being read as soon as it passes the limit
        form = await request.clone(client_max_size=LOGIN_MAX_BYTES + 1).post()
    except web.HTTPRequestEntityTooLarge as e:
        raise web.HTTPRequestEntityTooLarge(LOGIN_MAX_BYTES, LOGIN_MAX_BYTES, text=TOO_LARGE) from e
    return {k: v for k, v in form.items() if isinstance(v, str)}


def client_address(remote: str | None) -> str:
    """The address a client is counted under: IPv4 as is, IPv6 by its /64 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "-"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def safe_next(value: str) -> str:
    """`value` when it is a path on this console (one `/`, then neither `/` nor a backslash; printable
    ASCII without backslashes; no scheme, no host), else `/`. Browsers read `/\\host` as `//host`."""
    if (
        len(value) > MAX_NEXT_CHARS
        or not value.startswith("/")
        or value[1:2] in ("/", "\\")
        or any(not "!" <= c <= "~" or c == "\\" for c in value)
    ):
        return "/"
    parts = urlsplit(value)
    return "/" if parts.scheme or parts.netloc else value


class LoginLimiter:
    """At most `attempts` failed logins per (client address, name), and ADDRESS_FACTOR times that per
    client address (several operators may share one), in a sliding window of `window_s`."""

    ADDRESS_FACTOR = 4

    def __init__(
        self, attempts: int, window_s: float = 60.0, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if attempts < 1 or max_keys < 2:
            raise ValueError(f"attempts ({attempts}) must be at least 1 and max_keys ({max_keys}) at least 2")
        self.attempts, self.window_s, self.max_keys, self.clock = attempts, window_s, max_keys, clock
        self._failures: OrderedDict[tuple[str, ...], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    @staticmethod
    def _keys(address: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("address", address), ("name", address, name)

    def _limit(self, key: tuple[str, ...]) -> int:
        return self.attempts * (self.ADDRESS_FACTOR if key[0] == "address" else 1)

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def _wait(self, address: str, name: str, now: float) -> float:
        waits = [
            q[0] + self.window_s - now
            for k in self._keys(address, name)
            if len(q := self._recent(k, now)) >= self._limit(k)
        ]
        return max(waits, default=0.0)

    def retry_after(self, address: str, name: str) -> float:
        """Seconds until `name` may be tried from `address`; 0: now."""
        with self._lock:
            return self._wait(address, name, self.clock())

    def begin(self, address: str, name: str) -> float:
        """Before a password is checked: 0 and the attempt counted as failed (until `succeeded`), or
        the seconds to wait, counting nothing."""
        now = self.clock()
        with self._lock:
            wait = self._wait(address, name, now)
            if wait == 0:
                for k in self._keys(address, name):
                    self._failures.setdefault(k, deque()).append(now)
                    self._failures.move_to_end(k)
                while len(self._failures) > self.max_keys:
                    self._failures.popitem(last=False)  # the entry changed longest ago
            return wait

    def succeeded(self, address: str, name: str) -> None:
        """The login begun for (address, name) was right: its attempt no longer counts."""
        with self._lock:
            for k in self._keys(address, name):
                q = self._failures.get(k)
                if q:
                    q.pop()
                if q is not None and not q:
                    del self._failures[k]
