"""Pages, filters and the summary of a status answer (proto/paging.py): pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgefleet.proto.commands import Command, StatusRequest
from edgefleet.proto.paging import (
    MAX_PAGE_LIMIT,
    PAGE_BUDGET_BYTES,
    NodeFilter,
    json_size,
    node_page,
    page_of,
    summarize,
    summary_line,
)
from edgefleet.proto.payloads import MAX_PAYLOAD_BYTES, CommandResult, PayloadError


def node(i: int, **over: Any) -> dict[str, Any]:
    n = {
        "node_id": f"n{i:04d}",
        "state": "online",
        "groups": [f"line-{i % 3}"],
        "assigned_groups": [],
        "profile": "pi5" if i % 2 else "orin",
        "model": "qwen",
        "sync": "in sync",
        "drift": [],
        "transfers": {},
    }
    return {**n, **over}


def test_a_page_holds_at_most_limit_and_says_where_the_next_starts() -> None:
    items = list(range(25))
    first = page_of(items, 0, 10)
    assert first.items == list(range(10)) and first.total == 25 and first.next_offset == 10
    last = page_of(items, 20, 10)
    assert last.items == [20, 21, 22, 23, 24] and last.next_offset is None
    assert page_of(items, 30, 10).items == [] and page_of(items, 30, 10).next_offset is None
    counts = page_of(items, 0, 0)  # the counts only
    assert counts.items == [] and counts.total == 25 and counts.next_offset is None
    assert page_of(items).items == items and page_of(items).next_offset is None  # all that fit
    with pytest.raises(ValueError, match="must not be negative"):
        page_of(items, -1)


def test_a_page_is_cut_short_at_the_byte_budget_and_never_stalls() -> None:
    items = ["x" * 98] * 10  # 100 bytes of JSON each, plus a separator
    page = page_of(items, 0, None, budget=350)
    assert len(page.items) == 3 and page.next_offset == 3
    huge = page_of(["y" * 1000, "z"], 0, None, budget=10)  # a first entry over the budget: a page of its own
    assert huge.items == ["y" * 1000] and huge.next_offset == 1
    assert json_size("é") == 4  # UTF-8 bytes, as the answer carries them


def test_filters_select_by_group_state_profile_model_sync_errors_and_id() -> None:
    nodes = [
        node(1),
        node(2, state="offline"),
        node(3, state="failed"),
        node(4, sync="drifted", drift=["template t not desired"]),
        node(5, transfers={"adapter/a": {"state": "failed", "error": "bad"}}),
        node(6, assigned_groups=["extra"]),
        node(7, model="llama"),
    ]

    def ids(f: NodeFilter) -> list[str]:
        return [n["node_id"] for n in nodes if f.matches(n)]

    assert ids(NodeFilter()) == [n["node_id"] for n in nodes]
    assert ids(NodeFilter(group="line-1")) == ["n0001", "n0004", "n0007"]
    assert ids(NodeFilter(group="extra")) == ["n0006"]  # assigned, not yet applied: still in the group
    assert ids(NodeFilter(state="offline")) == ["n0002"]
    assert ids(NodeFilter(profile="orin")) == ["n0002", "n0004", "n0006"]
    assert ids(NodeFilter(model="llama")) == ["n0007"]
    assert ids(NodeFilter(out_of_sync=True)) == ["n0004"]
    assert ids(NodeFilter(errors=True)) == ["n0003", "n0005"]
    assert ids(NodeFilter(search="N000")) == ids(NodeFilter())  # any case
    assert ids(NodeFilter(group="line-1", profile="pi5")) == ["n0001", "n0007"]  # every filter holds
    assert NodeFilter(group="g", out_of_sync=True).describe() == "group g, out of sync"
    assert not NodeFilter().active() and NodeFilter(errors=True).active()


def test_the_summary_counts_every_node_whatever_the_filter() -> None:
    nodes = [node(i) for i in range(10)]
    nodes += [node(10, state="offline"), node(11, state="failed"), node(12, sync="drifted"), node(13, sync="unknown")]
    data = node_page(nodes, NodeFilter(state="failed"), 0, 5)
    assert [n["node_id"] for n in data["nodes"]] == ["n0011"] and data["total"] == 1 and data["next_offset"] is None
    s = data["summary"]
    assert s["total"] == 14 and s["by_state"] == {"online": 12, "offline": 1, "failed": 1}
    assert s["out_of_sync"] == 1 and s["failed"] == 1 and s["errors"] == 1
    assert s["by_sync"] == {"drifted": 1, "in sync": 12, "unknown": 1}
    assert summary_line(s) == "14 nodes: 12 online, 1 offline, 1 failed; 1 out of sync; 1 with errors"
    assert summarize([])["by_state"] == {"online": 0, "offline": 0, "failed": 0}


def test_a_status_answer_of_any_size_stays_under_the_payload_limit() -> None:
    """The defect: 1,000 nodes made a 333,564-byte answer, refused by every client (limit 262,144)."""
    drift = [f"template t{j} at 1, desired 2" for j in range(8)]
    nodes = [node(i, sync="drifted", drift=drift, templates={f"t{j}": "1" for j in range(8)}) for i in range(3000)]
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        data = node_page(nodes, NodeFilter(), offset)
        wire = CommandResult(ok=True, data=data).dumps()
        assert len(wire) < MAX_PAYLOAD_BYTES, len(wire)
        assert data["total"] == 3000 and data["nodes"]
        seen += [n["node_id"] for n in data["nodes"]]
        offset = data["next_offset"]
    assert seen == [n["node_id"] for n in nodes]
    assert PAGE_BUDGET_BYTES < MAX_PAYLOAD_BYTES


def test_the_status_request_bounds_its_page_and_names_a_bad_filter() -> None:
    req = Command(op="status", offset=20, limit=10, group="line", out_of_sync=True).request
    assert isinstance(req, StatusRequest) and req.node_filter() == NodeFilter(group="line", out_of_sync=True)
    with pytest.raises(PayloadError, match="limit: Input should be less than or equal to 1000"):
        Command(op="status", limit=MAX_PAGE_LIMIT + 1)
    with pytest.raises(PayloadError, match="offset: Input should be greater than or equal to 0"):
        Command(op="status", offset=-1)
    with pytest.raises(PayloadError, match="state: Input should be"):
        Command(op="status", state="sleeping")
    assert json.loads(Command(op="status").dumps())["limit"] is None  # as many as fit
