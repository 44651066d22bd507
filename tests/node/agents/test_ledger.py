"""The agent ledger on real SQLite files: runs, effects, approvals and readings survive a reopen."""

from __future__ import annotations

import time
from pathlib import Path

from edgefleet.node.agents.ledger import AgentLedger, RunRow
from edgefleet.proto.agent_runs import AgentStep


def a_run(run_id: str = "run-0123456789abcdef") -> RunRow:
    return RunRow(
        id=run_id,
        rule="overheat",
        rule_version="1",
        trigger="sensors/m1/vibration",
        state="running",
        started=time.time(),
        spec={"rule": {"name": "overheat"}, "tools": {}},
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "g"}],
    )


def test_a_run_and_its_steps_survive_a_reopen_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    ledger = AgentLedger(path)
    run = a_run()
    assert ledger.create_run(run, source_key="overheat|sensors/m1/vibration|m-1")
    model_step = AgentStep(index=run.take_step(), kind="model", detail="1 tool call(s)")
    run.turns = 1
    run.messages.append(
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "name": "t", "arguments": "{}"}]}
    )
    run.pending = [{"step": run.take_step(), "id": "c0", "name": "t", "arguments": "{}"}]
    ledger.save(run, [model_step], ran=["read_temp"])
    ledger.close()

    again = AgentLedger(path)
    got = again.run(run.id)
    assert got is not None
    assert (got.state, got.turns, got.next_step) == ("running", 1, 2)
    assert got.messages == run.messages and got.pending == run.pending
    assert [s.index for s in again.steps(run.id)] == [0]
    assert [r.id for r in again.runs(["running", "waiting"])] == [run.id]
    assert again.counters("overheat").rule == {"read_temp": 1}
    again.close()


def test_a_trigger_message_starts_one_run_however_often_it_comes(tmp_path: Path) -> None:
    ledger = AgentLedger(tmp_path / "agents.db")
    assert ledger.create_run(a_run("run-aaaaaaaaaaaaaaaa"), source_key="r|t|id-1")
    assert not ledger.create_run(a_run("run-bbbbbbbbbbbbbbbb"), source_key="r|t|id-1")
    assert ledger.run("run-bbbbbbbbbbbbbbbb") is None
    ledger.close()


def test_an_effect_written_before_a_crash_is_pending_after_it_with_its_first_payload(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    ledger = AgentLedger(path)
    first = ledger.begin_effect("run-x1234567", 3, "open_ticket", "actions/tickets/m1", b'{"n": 1}')
    assert (first.key, first.state) == ("run-x1234567:3", "pending")
    ledger.close()  # "crash" between the effect row and the PUBACK

    ledger = AgentLedger(path)
    assert [e.key for e in ledger.effects("pending")] == ["run-x1234567:3"]
    # the run reaching the same step again gets the effect as first written, not a new one
    same = ledger.begin_effect("run-x1234567", 3, "open_ticket", "actions/tickets/m1", b'{"n": 2}')
    assert (same.payload, same.state) == (b'{"n": 1}', "pending")
    ledger.effect_done(same.key)
    assert ledger.effects("pending") == []
    assert ledger.begin_effect("run-x1234567", 3, "open_ticket", "actions/tickets/m1", b"{}").state == "done"
    ledger.close()


def test_an_approval_is_decided_once_and_the_decision_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    ledger = AgentLedger(path)
    run = a_run()
    ledger.create_run(run)
    ledger.request_approval(run, 1, "open_ticket", '{"priority": 5}', "priority above 3", time.time() + 60)
    assert run.state == "waiting" and ledger.run(run.id).state == "waiting"
    assert [(a.run_id, a.step) for a in ledger.pending_approvals()] == [(run.id, 1)]
    assert ledger.decide(run.id, 1, "approved", "alice", "ok")
    assert not ledger.decide(run.id, 1, "denied", "bob")  # decided already: the first decision stands
    assert not ledger.decide(run.id, 9, "approved", "alice")  # nothing pending there
    ledger.close()

    ledger = AgentLedger(path)
    a = ledger.approval(run.id, 1)
    assert a is not None and (a.state, a.operator, a.reason) == ("approved", "alice", "ok")
    assert ledger.pending_approvals() == []
    ledger.close()


def test_counters_count_the_last_hour_per_tool_and_per_rule(tmp_path: Path) -> None:
    ledger = AgentLedger(tmp_path / "agents.db")
    r1, r2 = a_run("run-1111111111"), a_run("run-2222222222")
    r2.rule = "other"
    ledger.create_run(r1)
    ledger.create_run(r2)
    ledger.save(r1, ran=["open_ticket", "open_ticket", "read_temp"])
    ledger.save(r2, ran=["open_ticket"])
    now = ledger.counters("overheat")
    assert now.node == {"open_ticket": 3, "read_temp": 1}
    assert now.rule == {"open_ticket": 2, "read_temp": 1}
    later = ledger.counters("overheat", now=time.time() + 3601)
    assert later.node == {} and later.rule == {}
    ledger.close()


def test_the_latest_readings_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    ledger = AgentLedger(path)
    ledger.put_latest("sensors/m1/temperature", b'{"c": 70}', 100.0)
    ledger.put_latest("sensors/m1/temperature", b'{"c": 91}', 200.0)
    ledger.close()
    assert AgentLedger(path).all_latest() == {"sensors/m1/temperature": (b'{"c": 91}', 200.0)}
