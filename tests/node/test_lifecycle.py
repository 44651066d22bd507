"""Capacity, firmware profiles, thermal limits and shutdown, each on its own node process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import BIN, collect, wait_for, write_profile

LONG = pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=1500, temperature=0)


def _hold(stub, request) -> tuple[object, threading.Thread]:  # type: ignore[no-untyped-def]
    """Start a stream and keep reading it in the background; returns (call, thread)."""
    call = stub.Generate(request)

    def drain() -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    return call, t


def test_queue_full_is_resource_exhausted_at_once(start_node, tmp_path: Path) -> None:
    node = start_node(write_profile(tmp_path / "tiny.toml", name="tiny", slots=1, queue_length=1, throttle_slots=1))
    running, _ = _hold(node.stub, LONG)
    assert wait_for(lambda: node.info().slots_busy == 1)
    queued, _ = _hold(node.stub, LONG)
    assert wait_for(lambda: node.info().queue_depth == 1)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert time.monotonic() - t0 < 2.0, "QueueFull must not wait for a slot"
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue_length" in err.value.details()
    running.cancel()  # type: ignore[attr-defined]
    queued.cancel()  # type: ignore[attr-defined]
    assert wait_for(lambda: node.info().slots_busy == 0 and node.info().queue_depth == 0)
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2)))
    assert last.finish_reason == pb.FINISH_REASON_LENGTH


def _serve(profile: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "edgefleet-node"),
            "serve",
            "--profile",
            str(profile),
            "--port",
            "0",
            "--data-dir",
            str(tmp / "data"),
            "--log-format",
            "text",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_threads_setting_overrides_the_profile_and_is_checked(start_node, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "two.toml", name="two", threads=2)
    node = start_node(profile, env={"EDGEFLEET_THREADS": "1"})
    assert "compute threads threads=1" in node.log()
    bad = _serve(profile, tmp_path, "--threads", "-1")
    assert bad.returncode == 2
    assert "threads" in bad.stderr and "greater than or equal to 0" in bad.stderr


def test_node_drops_to_one_thread_while_other_processes_hold_the_cores(start_node, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "two.toml", name="two", threads=2)
    node = start_node(profile, env={"EDGEFLEET_THREADS": "2"})
    request = pb.GenerateRequest(prompt="Valves:", max_tokens=48, temperature=0)
    quiet_text, _, _ = collect(node.stub.Generate(request))  # 2 threads; the governor learns their pace
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(cores)]
    try:

        def generate_and_check() -> bool:
            collect(node.stub.Generate(request))
            return "compute threads changed threads=1" in node.log()

        assert wait_for(generate_and_check, timeout=120, interval=0.1), node.log()[-2000:]
        one_thread_text, _, _ = collect(node.stub.Generate(request))
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert one_thread_text == quiet_text  # greedy answers do not depend on the thread count


def test_profile_over_budget_refuses_to_start_naming_the_numbers(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "small.toml", name="small", budget_mb=200, slots=4, n_ctx=2048, models=[])
    result = _serve(profile, tmp_path)
    assert result.returncode == 2
    err = result.stderr
    assert "allows 200 MiB" in err and "needs" in err
    assert "KV cache 180 MiB" in err and "4 slots x 2048 tokens" in err


def test_malformed_profile_names_file_and_field(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "broken.toml", name="broken", slots=-3)
    result = _serve(profile, tmp_path)
    assert result.returncode == 2
    assert str(profile) in result.stderr
    assert "context.slots" in result.stderr


def test_thermal_throttle_shed_and_recovery(start_node, tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("50000\n")
    profile = write_profile(
        tmp_path / "hot.toml", name="hot", throttle_c=70.0, shed_c=80.0, throttle_slots=1, poll_interval_s=0.1
    )
    node = start_node(profile, env={"EDGEFLEET_THERMAL_ZONE": str(zone)})
    info = node.info()
    assert info.thermal.available and info.thermal.temperature_c == 50.0
    assert info.slots_available == 4

    zone.write_text("75000\n")
    assert wait_for(lambda: node.info().slots_available == 1), "throttling should cut slots to 1"
    assert node.info().thermal.throttled
    calls = [_hold(node.stub, LONG)[0] for _ in range(2)]
    assert wait_for(lambda: node.info().queue_depth == 1), "the second request waits for the one slot"
    assert node.info().slots_busy == 1
    for c in calls:
        c.cancel()  # type: ignore[attr-defined]

    zone.write_text("85000\n")
    assert wait_for(lambda: node.info().thermal.shedding)
    with pytest.raises(grpc.RpcError) as err:
        list(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "85.0 C" in err.value.details() and "shed" in err.value.details()

    zone.write_text("60000\n")
    assert wait_for(lambda: node.info().status == "serving" and node.info().slots_available == 4)
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2)))
    assert last.finish_reason == pb.FINISH_REASON_LENGTH


def test_sigterm_drains_in_flight_and_refuses_new(start_node) -> None:
    node = start_node()
    stream = node.stub.Generate(pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=200, temperature=0))
    first = next(stream)
    assert first.text is not None
    node.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: node.info().status == "draining", timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        list(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert rest[-1].usage.completion_tokens == 200
    assert node.proc.wait(timeout=30) == 0
