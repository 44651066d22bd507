"""balena's update lock: the pure policy on data, the lock file's semantics, and a real node process
holding the file while a Generate runs and removing it when idle."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import grpc
import pytest

from edgefleet.node.update_lock import Activity, UpdateLockFile, UpdateLockPolicy
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import wait_for

IDLE, BUSY = Activity(), Activity(in_flight=1)


@pytest.mark.parametrize("activity", [Activity(in_flight=2), Activity(inbox=1), Activity(installing=True)])
def test_policy_holds_while_busy_and_releases_when_idle(activity: Activity) -> None:
    p = UpdateLockPolicy(max_hold_s=300)
    assert p.decide(IDLE, 0.0) is False
    assert p.decide(activity, 1.0) is True
    p.taken(1.0)
    assert p.decide(activity, 100.0) is True
    assert p.decide(IDLE, 101.0) is False


def test_policy_bounds_one_hold_then_leaves_the_lock_free_for_an_update() -> None:
    p = UpdateLockPolicy(max_hold_s=300, release_s=30)
    assert p.decide(BUSY, 0.0)
    p.taken(0.0)
    assert p.decide(BUSY, 299.9) is True
    assert p.decide(BUSY, 300.0) is False  # bounded, though still busy
    assert p.decide(BUSY, 320.0) is False  # free for the supervisor to update
    assert p.decide(BUSY, 330.0) is True  # then protected again
    p.taken(330.0)
    assert p.decide(BUSY, 629.0) is True and p.decide(BUSY, 630.0) is False
    assert p.decide(IDLE, 631.0) is False and p.decide(BUSY, 632.0) is True  # idle resets the wait


def test_policy_keeps_asking_until_the_file_is_taken() -> None:
    p = UpdateLockPolicy(max_hold_s=5)
    assert p.decide(BUSY, 0.0) and p.decide(BUSY, 10.0)  # never taken (the supervisor's file): no bound ran


def test_lock_file_is_exclusive_flocked_and_never_takes_the_supervisors(tmp_path: Path) -> None:
    path = tmp_path / "updates.lock"
    lock = UpdateLockFile(path)
    assert lock.acquire() and path.exists()
    with open(path) as other, pytest.raises(BlockingIOError):  # the host OS update scripts wait on this
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not UpdateLockFile(path).acquire()  # exclusive create
    lock.release()
    assert not path.exists()
    path.write_text("")  # the Supervisor took it (it is updating): left alone
    assert not lock.acquire() and not lock.clear_stale() and path.exists()
    path.unlink()
    stale = UpdateLockFile(path)
    assert stale.acquire()
    os.close(stale._fd)  # type: ignore[arg-type]  # as if the node was killed: file stays, flock gone
    assert lock.clear_stale() and not path.exists()


LONG = pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=400, temperature=0)


def _generate_in_background(node) -> threading.Thread:  # type: ignore[no-untyped-def]
    def run() -> None:
        try:
            for _ in node.stub.Generate(LONG, timeout=120):
                pass
        except grpc.RpcError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_node_holds_the_lock_while_generating_and_removes_it_when_idle(start_node, tmp_path: Path) -> None:
    lock_dir = tmp_path / "balena"
    lock_dir.mkdir()
    path = lock_dir / "updates.lock"
    node = start_node(env={"EDGEFLEET_UPDATE_LOCK_FILE": str(path)})
    assert not path.exists()
    t = _generate_in_background(node)
    assert wait_for(path.exists, timeout=30)
    assert path.read_text().startswith("edgefleet-node pid")
    t.join(120)
    assert not t.is_alive()
    assert wait_for(lambda: not path.exists(), timeout=5)


def test_node_bounds_one_hold_by_update_lock_max_s(start_node, tmp_path: Path) -> None:
    (tmp_path / "balena").mkdir()
    path = tmp_path / "balena" / "updates.lock"
    node = start_node(env={"EDGEFLEET_UPDATE_LOCK_FILE": str(path), "EDGEFLEET_UPDATE_LOCK_MAX_S": "0.5"})
    t = _generate_in_background(node)
    assert wait_for(path.exists, timeout=30)
    assert wait_for(lambda: not path.exists(), timeout=5)
    assert node.info().slots_busy == 1 or not t.is_alive()  # released though (most likely) still generating
    t.join(120)
    assert not path.exists()
