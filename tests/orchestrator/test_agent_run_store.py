"""The orchestrator's store of agent runs (orchestrator/agent_runs.py) on a real SQLite registry:
the newest report per run wins, the queue holds only live undecided calls, and the table is bounded."""

from __future__ import annotations

import time
from pathlib import Path

from edgefleet.orchestrator.agent_runs import AgentRunStore
from edgefleet.orchestrator.registry import Registry, open_registry
from edgefleet.proto.agent_runs import AgentRunReport, ApprovalDecision, ApprovalRequest


def report(run_id: str, ts: float, state: str = "running", node: str = "n1", **kw: object) -> AgentRunReport:
    return AgentRunReport(
        node_id=node, run_id=run_id, rule="r", rule_version="1", trigger="t", state=state, started=ts, ts=ts, **kw
    )  # type: ignore[arg-type]


def store(tmp: Path, **kw: float) -> AgentRunStore:
    return AgentRunStore(Registry(open_registry(tmp / "registry.db")), **kw)  # type: ignore[arg-type]


def test_the_newest_report_of_a_run_wins(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.record(report("run-00001", 10.0, "running")).stored
    assert s.record(report("run-00001", 12.0, "done", ended=12.0)).ended_now
    late = s.record(report("run-00001", 11.0, "waiting"))  # a redelivery of an older one
    assert not late.stored
    (run,) = s.runs("run-00001")
    assert run.report.state == "done" and run.ended
    # the same run id from another node is another run
    s.record(report("run-00001", 13.0, node="n2"))
    assert len(s.runs("run-00001")) == 2 and len(s.runs("run-00001", "n2")) == 1


def test_the_queue_holds_live_undecided_calls_only(tmp_path: Path) -> None:
    s, now = store(tmp_path), time.time()

    def waiting(run_id: str, expires_at: float) -> AgentRunReport:
        p = ApprovalRequest(run_id=run_id, step=1, tool="t", arguments="{}", why="w", expires_at=expires_at)
        return report(run_id, now, "waiting", pending=p)

    s.record(waiting("run-live-01", now + 60))
    s.record(waiting("run-late-01", now - 1))
    s.record(waiting("run-said-01", now + 60))
    s.record_decision(
        ApprovalDecision(site="lab", node_id="n1", run_id="run-said-01", step=1, approve=False, operator="a")
    )
    assert [a["run_id"] for a in s.waiting(now)] == ["run-live-01"]
    assert s.runs("run-said-01")[0].decision(1) is not None
    assert s.record(report("run-said-01", now + 1, "stopped", ended=now + 1)).decided


def test_the_table_is_bounded(tmp_path: Path) -> None:
    forgotten: list[tuple[str, str]] = []
    s = AgentRunStore(
        Registry(open_registry(tmp_path / "registry.db")),
        max_runs=10,
        retention_s=1000,
        on_forget=lambda node, run: forgotten.append((node, run)),
    )
    now = 10_000.0
    for i in range(25):
        s.record(report(f"run-{i:05d}", now - 100 + i), now=now)
    s.record(report("run-ancient", now - 5000), now=now)
    s.record_decision(
        ApprovalDecision(site="lab", node_id="n1", run_id="run-ancient", step=1, approve=True, operator="a")
    )
    assert s.prune(now) == 16  # the ancient one past the retention, then the oldest past 10
    assert forgotten == [("n1", "run-ancient")]  # its retained decision can be cleared
    page = s.page(limit=100)
    assert page["total"] == 10 and page["runs"][0]["run_id"] == "run-00024" and page["next_offset"] is None
    assert page["runs"][-1]["run_id"] == "run-00015"
