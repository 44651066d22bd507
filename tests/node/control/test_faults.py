"""NodeFaults: handler errors reported, counted and retried; a cause that passes is retried until it does."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.node.control import faults as f
from edgefleet.node.control.faults import NodeFaults, parse_bounded
from edgefleet.node.errors import StorageFull
from edgefleet.proto.payloads import DesiredState, PayloadError


def message(topic: str, mid: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload = b"{}"
    return msg


def make_due(nf: NodeFaults) -> None:
    """Skip the backoff waits: every pending retry is due now."""
    for r in nf._retries.values():
        r.due = 0


def make(tmp_path: Path) -> tuple[NodeFaults, list[dict[str, object]]]:
    sent: list[dict[str, object]] = []
    nf = NodeFaults("n1", "edgefleet/lab/errors/n1", tmp_path, warn_bytes=1, retry_s=0.001)
    nf.bind(lambda topic, payload: sent.append(json.loads(payload)))
    return nf, sent


def test_a_full_disk_is_reported_once_and_retried_until_it_passes(tmp_path: Path) -> None:
    nf, sent = make(tmp_path)
    outcomes = [StorageFull("ledger", tmp_path), StorageFull("ledger", tmp_path), None]

    def again() -> bool:
        e = outcomes.pop(0)
        if e is not None:
            raise e
        return True

    nf.hook(per_message=True)(message("s/1"), StorageFull("ledger", tmp_path), again)
    for _ in range(20):
        make_due(nf)
        nf.retry_due()
    assert nf.pending_retries() == 0 and not outcomes
    assert nf.handler_errors == 3
    assert [s["code"] for s in sent] == ["storage_full"]  # repeated at most once a minute
    assert "free of" in str(sent[0]["message"])


def test_a_bug_is_retried_a_few_times_then_left_to_the_broker(tmp_path: Path) -> None:
    nf, sent = make(tmp_path)
    calls = 0

    def again() -> bool:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    nf.hook(per_message=False)(message("desired/node/n1"), KeyError("bug"), again)
    for _ in range(50):
        make_due(nf)
        nf.retry_due()
    assert calls == f.OTHER_ATTEMPTS and nf.pending_retries() == 0
    assert sent[0]["code"] == "handler_error" and sent[0]["topic"] == "desired/node/n1"


def test_a_newer_message_on_a_topic_replaces_the_older_retry(tmp_path: Path) -> None:
    nf, _ = make(tmp_path)
    hook = nf.hook(per_message=False)
    hook(message("desired/node/n1", 1), OSError(28, "full"), lambda: True)
    hook(message("desired/node/n1", 2), OSError(28, "full"), lambda: True)
    assert nf.pending_retries() == 1


def test_disk_figures_and_the_low_flag(tmp_path: Path) -> None:
    nf, _ = make(tmp_path)
    free, total, low = nf.disk()
    assert 0 < free <= total and not low
    nf.warn_bytes = total + 1
    assert nf.disk()[2]


def test_deep_json_is_a_payload_error_not_a_recursion_error() -> None:
    raw = b'{"v": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    try:
        parse_bounded(DesiredState, raw)
    except PayloadError as e:
        assert "levels deep" in str(e)
    else:
        raise AssertionError("not refused")
