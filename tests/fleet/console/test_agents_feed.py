"""The agents page's pure parts, without a site: how the orchestrator's answer and the reports the
console received since are merged (runs and the approval queue), and how the page's query and the
approve / deny form are read, each wrong field named."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import MultiDict

from edgefleet.fleet.console.agent_feed import merge_approvals, merge_runs, run_row
from edgefleet.fleet.console.agents_page import AgentQuery, FormError, QueryError, decision_command

NODE = "edge-agent"


def report(run_id: str, state: str = "running", ts: float = 100.0, started: float = 50.0, **kw: Any) -> dict[str, Any]:
    return {
        "node_id": kw.pop("node_id", NODE),
        "run_id": run_id,
        "rule": kw.pop("rule", "overheat"),
        "rule_version": "1",
        "trigger": "sensors/m1/temp",
        "state": state,
        "steps": [{"index": 0, "kind": "model"}],
        "started": started,
        "ts": ts,
        **kw,
    }


def test_a_newer_report_the_console_saw_wins_over_the_orchestrators_row() -> None:
    page = {"runs": [report("run-aaaaaaaa", "running", ts=100.0)], "total": 1}
    seen = {"run-aaaaaaaa": run_row(report("run-aaaaaaaa", "done", ts=101.0, reason="answered"))}
    rows, total = merge_runs(page, seen, {"offset": 0, "limit": 25})
    assert [(r["run_id"], r["state"], r["reason"]) for r in rows] == [("run-aaaaaaaa", "done", "answered")]
    assert total == 1
    older = {"run-aaaaaaaa": run_row(report("run-aaaaaaaa", "waiting", ts=99.0))}
    assert merge_runs(page, older, {"offset": 0, "limit": 25})[0][0]["state"] == "running"


def test_runs_the_orchestrator_has_not_listed_yet_come_first_on_the_first_page_only() -> None:
    page = {"runs": [report("run-old00000", started=10.0)], "total": 1}
    seen = {"run-new00000": run_row(report("run-new00000", started=20.0))}
    rows, total = merge_runs(page, seen, {"offset": 0, "limit": 25})
    assert [r["run_id"] for r in rows] == ["run-new00000", "run-old00000"] and total == 2
    rows, total = merge_runs(page, seen, {"offset": 25, "limit": 25})
    assert [r["run_id"] for r in rows] == ["run-old00000"] and total == 1
    # a filter holds for them too: a run of another rule is not added, and a row that left the filter goes
    assert [r["run_id"] for r in merge_runs(page, seen, {"rule": "other", "offset": 0, "limit": 25})[0]] == [
        "run-old00000"
    ]
    moved = {"run-old00000": run_row(report("run-old00000", "done", ts=200.0, started=10.0))}
    assert merge_runs(page, moved, {"state": "running", "offset": 0, "limit": 25}) == ([], 0)


def pending(run_id: str, step: int, expires_at: float) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step,
        "tool": "open_valve",
        "arguments": '{"pct": 80}',
        "why": "pct > 50",
        "expires_at": expires_at,
    }


def test_the_queue_drops_answered_and_expired_calls_and_adds_those_only_the_console_saw() -> None:
    now = 1000.0
    from_orchestrator = [
        {**pending("run-answered", 1, now + 60), "node_id": NODE},
        {**pending("run-expired0", 1, now - 1), "node_id": NODE},
        {**pending("run-waits000", 2, now + 30), "node_id": NODE},
    ]
    reports = {
        "run-answered": report("run-answered", "running"),  # the node moved on: approved or denied
        "run-waits000": report("run-waits000", "waiting", pending=pending("run-waits000", 2, now + 30)),
        "run-new00000": report("run-new00000", "waiting", pending=pending("run-new00000", 3, now + 90)),
    }
    decisions = {"run-waits000:2": {"approve": True, "operator": "olivia", "reason": "", "ts": now}}
    queue = merge_approvals(from_orchestrator, reports, decisions, now)
    assert [(a["run_id"], a["step"]) for a in queue] == [("run-waits000", 2), ("run-new00000", 3)]
    assert queue[0]["decision"]["operator"] == "olivia" and queue[1]["decision"] is None
    assert queue[1]["rule"] == "overheat" and queue[1]["node_id"] == NODE


def test_the_query_names_what_is_wrong() -> None:
    assert AgentQuery.parse(MultiDict(node="edge-1", state="waiting", limit="10")) == AgentQuery(
        "edge-1", "", "waiting", 0, 10
    )
    for bad, word in (
        ({"state": "sleeping"}, "state"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"limit": "7"}, "limit"),
        ({"node": "../x"}, "node"),
    ):
        with pytest.raises(QueryError, match=word):
            AgentQuery.parse(MultiDict(bad))


def test_a_decision_form_names_the_field_that_is_wrong() -> None:
    good = {"node": NODE, "run_id": "run-12345678", "step": "2", "reason": " looks fine "}
    cmd = decision_command("approve", MultiDict(good))
    assert cmd.op == "approve" and cmd.request.step == 2 and cmd.request.reason == "looks fine"
    # for the logged-in account: the orchestrator names "<account> via <the console's signature>"
    assert decision_command("approve", MultiDict(good), "olivia").request.on_behalf_of == "olivia"
    wrong = [("node", "a/b"), ("run_id", "short"), ("reason", "x" * 600)]
    wrong += [("step", v) for v in ("two", "-1", "²", "9" * 5000)]  # "²" is a digit to str.isdigit, not to int
    for field, value in wrong:
        with pytest.raises(FormError) as e:
            decision_command("deny", MultiDict({**good, field: value}))
        assert e.value.field == field, (field, e.value.message)
