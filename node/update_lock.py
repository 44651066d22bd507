"""balena's update lock, held while the node has work that an update would cut short.

balena documents two locks on one file, `/tmp/balena/updates.lock` in the container: the Supervisor
will not kill the services for an update (or reboot for a config change) while the file EXISTS, and it
must be created exclusively (O_CREAT|O_EXCL, as the `lockfile` tool does), since the Supervisor creates
the same file itself before it kills a service; host OS update scripts wait while a process holds an
exclusive flock() on it. The node does both while it holds the lock, and on release removes the file
and closes it (which drops the flock). A file that exists and is not ours (the Supervisor's) is left alone.

The node holds the lock while requests are in flight (engine.outstanding), the sensor inbox is not
empty, or an artifact is being fetched or installed, and releases it when idle; never longer than
EDGEFLEET_UPDATE_LOCK_MAX_S in one hold, after which it leaves the lock free for RELEASE_S (or until the
node is idle) so that a pending update can take its turn. Off when EDGEFLEET_UPDATE_LOCK_FILE is empty
or its directory does not exist (not on balena).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgefleet.node.update_lock")
MARKER = "edgefleet-node"
RELEASE_S = 30.0  # after a hold hit its bound: how long the lock stays free while busy
POLL_S = 0.2


@dataclass(frozen=True)
class Activity:
    in_flight: int = 0
    inbox: int = 0
    installing: bool = False

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.inbox > 0 or self.installing


class UpdateLockPolicy:
    """Pure: activity and time in, whether the lock should be held out. `taken` tells it a hold began."""

    def __init__(self, max_hold_s: float, release_s: float = RELEASE_S) -> None:
        self.max_hold_s, self.release_s = max_hold_s, release_s
        self._since: float | None = None
        self._free_until = 0.0

    def decide(self, activity: Activity, now: float) -> bool:
        if not activity.busy:
            self._since, self._free_until = None, 0.0
            return False
        if self._since is not None:
            if now - self._since >= self.max_hold_s:  # bounded: let a pending update through
                self._since, self._free_until = None, now + self.release_s
                return False
            return True
        return now >= self._free_until

    def taken(self, now: float) -> None:
        self._since = now


class UpdateLockFile:
    """The lock file itself: created exclusively and flock()ed while held, removed on release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False  # the Supervisor's (it is updating now) or another holder's: not ours to take
        except OSError as e:
            log.warning("cannot take the update lock", extra={"path": str(self.path), "error": e.strerror})
            return False
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{MARKER} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # drops the flock
        self._fd = None

    def clear_stale(self) -> bool:
        """Remove a lock an edgefleet-node left when it was killed: ours by its text, and no flock on it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            if not os.read(fd, 256).decode(errors="replace").startswith(MARKER):
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a live process holds it
            os.unlink(self.path)
            return True
        finally:
            os.close(fd)


def node_activity(node: Any) -> Activity:
    """What the node is doing that an update would cut short (the parts it has: engine, sensors, artifacts)."""
    inbox, installing = 0, False
    agent = getattr(node, "agent", None)
    if agent is not None:
        sensors = getattr(agent, "sensors", None)
        if sensors is not None:
            inbox = sensors.ledger.depths()[0]
        for sync in (getattr(agent, n, None) for n in ("adapters", "knowledge", "model")):
            if sync is not None:
                installing |= any(t.state in ("fetching", "verifying") for t in sync.report()[1].values())
    return Activity(node.engine.outstanding, inbox, installing)


async def hold_update_lock(node: Any, path: Path | None, max_hold_s: float) -> None:
    """Run until cancelled: take and release the lock file as the node's activity says."""
    if path is None or not path.parent.is_dir():
        log.info("update lock off", extra={"path": str(path) if path else ""})
        return
    lock, policy = UpdateLockFile(path), UpdateLockPolicy(max_hold_s)
    if lock.clear_stale():
        log.warning("removed a stale update lock left by a killed node", extra={"path": str(path)})
    loop = asyncio.get_running_loop()
    try:
        while True:
            now = loop.time()
            try:
                want = policy.decide(node_activity(node), now)
            except Exception:  # a part going away at shutdown: hold nothing
                log.exception("update lock: cannot read the node's activity")
                want = False
            if want and not lock.held and lock.acquire():
                policy.taken(now)
                log.info("update lock taken", extra={"path": str(path)})
            elif not want and lock.held:
                lock.release()
                log.info("update lock released", extra={"path": str(path)})
            await asyncio.sleep(POLL_S)
    finally:
        lock.release()
