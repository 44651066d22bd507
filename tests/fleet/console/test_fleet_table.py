"""The fleet table's logic, data in and data out: the query a browser sends, the page and summary the
console answers, and what one browser's live stream sends next (fleet/console/fleet_table.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgefleet.fleet.console.fleet_table import FleetQuery, PageStream, QueryError, summary
from edgefleet.fleet.console.pages import json_in_html


def row(i: int, state: str = "online", **load: Any) -> dict[str, Any]:
    return {
        "node_id": f"n-{i:03d}",
        "state": state,
        "since": 0.0,
        "reason": "",
        "profile": "jetson",
        "model": "m",
        "groups": [f"line-{i % 2}"],
        "address": f"10.0.0.{i}:50051",
        "sync": "drifted" if i % 3 == 0 else "in sync",
        "drift": [],
        "outbox": 0,
        "insecure": False,
        "errors": 1 if i == 4 else 0,
        "error": "boom" if i == 4 else "",
        "load": {
            "ts": 1.0,
            "slots_busy": 1,
            "slots_total": 4,
            "queue": 2,
            "tokens_per_second": 10.0,
            "temperature_c": 50.0,
            "throttled": False,
            "shedding": False,
            "rss_bytes": 1,
            **load,
        },
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"state": "asleep"}, "state"),
        ({"sort": "colour"}, "sort"),
        ({"desc": "yes"}, "desc"),
        ({"q": "x" * 201}, "q"),
    ],
)
def test_a_bad_query_names_its_parameter(params: dict[str, str], field: str) -> None:
    with pytest.raises(QueryError) as e:
        FleetQuery.parse(params)
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


def test_a_query_round_trips_through_its_parameters() -> None:
    q = FleetQuery.parse({"q": " Line-1 jetson ", "state": "out-of-sync", "sort": "tps", "desc": "1", "offset": "50"})
    assert q.params() == {"q": "Line-1 jetson", "state": "out-of-sync", "sort": "tps", "desc": "1", "offset": "50"}
    assert FleetQuery.parse(q.params()) == q
    assert FleetQuery.parse({}).params() == {}


def test_filters_search_every_word_and_the_summary_counts_the_whole_fleet() -> None:
    rows = [row(i) for i in range(6)] + [row(6, "offline"), row(7, "failed"), row(8, throttled=True)]
    match = lambda **p: [r["node_id"] for r in rows if FleetQuery.parse(p).matches(r)]  # noqa: E731
    assert match(q="LINE-1 10.0.0.") == ["n-001", "n-003", "n-005", "n-007"]
    assert match(state="offline") == ["n-006"] and match(state="throttled") == ["n-008"]
    assert match(state="errors") == ["n-004"] and match(state="out-of-sync", group="line-0") == ["n-000", "n-006"]
    s = summary(rows)
    assert (s["nodes"], s["online"], s["offline"], s["failed"], s["throttled"], s["errors"]) == (9, 7, 1, 1, 1, 1)
    assert s["out_of_sync"] == 3
    assert (s["slots_busy"], s["slots_total"], s["queue"], s["tokens_per_second"]) == (7, 28, 14, 70.0)  # online only


def test_the_stream_sends_only_what_changed_on_the_page_and_the_last_state_wins() -> None:
    view = {"rows": [row(1), row(2)], "total": 9, "offset": 0, "limit": 2, "query": {}, "summary": {"nodes": 9}}
    view |= {"groups": ["line-0"], "status_error": "", "balena": None}
    fresh = PageStream()
    first = fresh.update(view, 1.0)
    assert first is not None and first["order"] == ["n-001", "n-002"] and len(first["rows"]) == 2
    assert fresh.update(view, 2.0) is None  # nothing changed: nothing sent
    held = PageStream()
    held.seed(view)  # the browser fetched this page: its rows are not sent again
    event = held.update(view, 1.0)
    assert event is not None and "rows" not in event and "order" not in event and event["summary"] == {"nodes": 9}
    # n-002 reports three times between two events: one row is sent, as it is now
    for queue in (5, 6, 7):
        view = {**view, "rows": [row(1), row(2, queue=queue)], "summary": {"nodes": 9, "queue": queue}}
    event = held.update(view, 2.0)
    assert event is not None and [r["load"]["queue"] for r in event["rows"]] == [7] and "order" not in event
    assert event["summary"] == {"nodes": 9, "queue": 7} and "groups" not in event
    event = held.update({**view, "rows": [row(2, queue=7), row(3)]}, 3.0)  # sorted anew: order and the new row
    assert (
        event is not None
        and event["order"] == ["n-002", "n-003"]
        and [r["node_id"] for r in event["rows"]] == ["n-003"]
    )


def test_the_page_s_json_cannot_end_its_script_element() -> None:
    hostile = {"groups": ["</script><script>alert(1)</script>", "a&b"]}
    text = json_in_html(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile
