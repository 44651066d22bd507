"""Multi-step site agents (read, decide, act): success rate and time per run, on a real node.

    .venv/bin/python -m bench.agent_eval [--model qwen2.5-coder-0.5b-instruct] [--threads 1] [--only overheat]
                                         [--insecure]

Starts Mosquitto and one node (x86-dev profile) serving `--model`, applies signed desired state
with the site tools and agent rules below (as the orchestrator signs it), then, one scenario at a
time, publishes the sensor values the agent will read (retained) and the message that starts a run,
and waits for the run's final report on `agents/runs/<node>` (every report goes to
bench/results/agent-eval-<UTC>.json). Every rule needs two or three model
turns: read a second sensor, decide on its value, act (publish on an actuator topic, within the
rule's limits so no operator is asked) or not, then answer.

A scenario succeeds when its run ends `done` and the actions published for its run are exactly the
expected ones (topic and the scored arguments), none when none is expected. The time of a run is
from the trigger's publish to its final report, as an operator would see it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from edgefleet.proto.agents import AgentRule, ToolSpec  # noqa: E402
from edgefleet.proto.payloads import DesiredState, Target  # noqa: E402
from edgefleet.proto.topics import Topics  # noqa: E402
from tests import site_identity  # noqa: E402
from tests.conftest import NodeProcess  # noqa: E402
from tests.mqtt_support import Mosquitto, Watcher, node_env  # noqa: E402

ENDED = ("done", "failed", "stopped")
MACHINE = {"machine": {"type": "string", "pattern": "^m[0-9]{1,3}$"}}


def _tool(name: str, kind: str, binding: dict[str, Any], props: dict[str, Any], description: str) -> ToolSpec:
    return ToolSpec.model_validate({
        "name": name, "version": "1", "kind": kind, "description": description, "binding": binding,
        "parameters": {"type": "object", "properties": props, "required": sorted(props)},
    })  # fmt: skip


TOOLS = {
    t.name: t
    for t in (
        _tool(
            "read_temperature",
            "read",
            {"type": "sensor_latest", "topic": "sensors/{machine}/temperature"},
            MACHINE,
            "Read the latest temperature of a machine, in degrees C.",
        ),
        _tool(
            "read_vibration",
            "read",
            {"type": "sensor_latest", "topic": "sensors/{machine}/vibration"},
            MACHINE,
            "Read the latest vibration of a machine, in mm/s.",
        ),
        _tool(
            "read_pressure",
            "read",
            {"type": "sensor_latest", "topic": "sensors/{machine}/pressure"},
            MACHINE,
            "Read the latest pressure of a machine, in bar.",
        ),
        _tool(
            "stop_machine",
            "act",
            {"type": "publish", "topic": "actions/stop/{machine}"},
            {**MACHINE, "reason": {"type": "string", "maxLength": 100}},
            "Stop a machine at once.",
        ),
        _tool(
            "open_ticket",
            "act",
            {"type": "publish", "topic": "actions/tickets/{machine}"},
            {**MACHINE, "priority": {"type": "integer", "minimum": 1, "maximum": 5}},
            "Open a maintenance ticket for a machine, priority 1 (low) to 5 (urgent).",
        ),
        _tool(
            "page_team",
            "act",
            {"type": "publish", "topic": "actions/page/{machine}"},
            {**MACHINE, "team": {"type": "string", "enum": ["electrical", "mechanical", "instrumentation"]}},
            "Page the on-call technician of a team about a machine.",
        ),
    )
}


def _rule(name: str, goal: str, tools: list[str], act: dict[str, Any]) -> AgentRule:
    return AgentRule.model_validate({
        "name": name, "version": "1", "goal": goal, "tools": tools,
        "trigger": {"type": "sensor", "topic_filter": f"sensors/+/{name}", "variables": {"machine": "topic[1]"}},
        "limits": {"max_steps": 4, "max_tokens": 96, "max_seconds": 240, "act": act},
    })  # fmt: skip


RULES = {
    r.name: r
    for r in (
        _rule(
            "overheat",
            'Machine {{ machine }} may be overheating. Call read_temperature with machine "{{ machine }}". '
            'If the temperature is above 90, call stop_machine with machine "{{ machine }}" and a short reason; '
            "if it is 90 or below, do not stop it. Then answer in one sentence.",
            ["read_temperature", "stop_machine"],
            {"stop_machine": {"calls_per_hour": 50}},
        ),
        _rule(
            "vib_alert",
            "Machine {{ machine }} raised a vibration alert. Call read_vibration with machine "
            '"{{ machine }}". If the vibration is above 7, call open_ticket with machine "{{ machine }}" and '
            "priority 3; if it is 7 or below, open no ticket. Then answer in one sentence.",
            ["read_vibration", "open_ticket"],
            {"open_ticket": {"calls_per_hour": 50, "args": {"priority": {"minimum": 1, "maximum": 3}}}},
        ),
        _rule(
            "low_pressure",
            "Machine {{ machine }} may be losing pressure. Call read_pressure with machine "
            '"{{ machine }}". If the pressure is below 2, call page_team with machine "{{ machine }}" and team '
            '"mechanical"; if it is 2 or more, page nobody. Then answer in one sentence.',
            ["read_pressure", "page_team"],
            {"page_team": {"calls_per_hour": 50}},
        ),
    )
}


@dataclass(frozen=True)
class Scenario:
    rule: str
    machine: str
    reading: tuple[str, float]  # (quantity topic level, value) published retained before the trigger
    expect: dict[str, dict[str, Any]]  # action topic → arguments that must be equal; {} for no action


SCENARIOS = [
    Scenario("overheat", "m11", ("temperature", 97.2), {"actions/stop/m11": {"machine": "m11"}}),
    Scenario("overheat", "m12", ("temperature", 61.0), {}),
    Scenario("overheat", "m13", ("temperature", 93.5), {"actions/stop/m13": {"machine": "m13"}}),
    Scenario("vib_alert", "m21", ("vibration", 9.4), {"actions/tickets/m21": {"machine": "m21", "priority": 3}}),
    Scenario("vib_alert", "m22", ("vibration", 2.1), {}),
    Scenario("vib_alert", "m23", ("vibration", 7.9), {"actions/tickets/m23": {"machine": "m23", "priority": 3}}),
    Scenario("low_pressure", "m31", ("pressure", 1.2), {"actions/page/m31": {"machine": "m31", "team": "mechanical"}}),
    Scenario("low_pressure", "m32", ("pressure", 4.5), {}),
]


def run_scenario(
    s: Scenario, node_id: str, topics: Topics, w: Watcher, actions: Watcher, timeout: float
) -> dict[str, Any]:
    seen = {r["run_id"] for r in w.on(topics.agent_runs(node_id)) if r.get("rule") == s.rule}
    w.publish(f"sensors/{s.machine}/{s.reading[0]}", json.dumps({"value": s.reading[1]}).encode(), retain=True)
    started = time.monotonic()
    w.publish(f"sensors/{s.machine}/{s.rule}", json.dumps({"id": f"{s.rule}-{s.machine}"}).encode())
    final: dict[str, Any] | None = None
    while time.monotonic() - started < timeout and final is None:
        runs = [r for r in w.on(topics.agent_runs(node_id)) if r.get("rule") == s.rule and r["run_id"] not in seen]
        final = next((r for r in reversed(runs) if r["state"] in ENDED), None)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    if final is None:
        return {
            "scenario": s,
            "ok": False,
            "seconds": seconds,
            "state": "timeout",
            "why": f"no final report in {timeout:.0f} s",
        }
    published = _actions(actions, s.machine, final["run_id"])
    ok = final["state"] == "done" and set(published) == set(s.expect)
    ok = ok and all(all(published[t].get(k) == v for k, v in want.items()) for t, want in s.expect.items())
    steps = [f"{x['kind']}:{x.get('tool', '')}:{x.get('verdict', '')}" for x in final.get("steps", [])]
    return {"scenario": s, "ok": ok, "seconds": seconds, "state": final["state"], "actions": published,
            "steps": steps, "why": final.get("reason", ""), "report": final}  # fmt: skip


def _actions(actions: Watcher, machine: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The arguments of every action published for `run_id` on one of the machine's actuator topics."""
    out = {}
    for kind in ("stop", "tickets", "page"):
        topic = f"actions/{kind}/{machine}"
        for m in actions.on(topic):
            if m.get("run_id") == run_id:
                out[topic] = m.get("arguments", {})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one run's final report")
    p.add_argument("--only", action="append", choices=sorted(RULES))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the runs' reports go (JSON)")
    add_insecure_flag(p)
    args = p.parse_args(argv)
    scenarios = [s for s in SCENARIOS if not args.only or s.rule in args.only]
    print(f"command: .venv/bin/python -m bench.agent_eval {' '.join(sys.argv[1:] if argv is None else argv)}")
    with BenchSecurity(args.insecure) as security, tempfile.TemporaryDirectory(prefix="edgefleet-agent-eval-") as d:
        tmp, site, node_id = Path(d), security.site, "agent-eval"
        topics = Topics.for_site(site)
        broker = Mosquitto(tmp, insecure=security.insecure)
        node = NodeProcess(tmp, node_id=node_id, env=node_env(broker, site=site, EDGEFLEET_MODEL=args.model,
                                                                  EDGEFLEET_THREADS=str(args.threads)))  # fmt: skip
        w, actions = Watcher(broker, f"{topics.root}#"), Watcher(broker, "actions/#")
        try:
            node.wait_serving(timeout=180)
            doc = DesiredState(site=site, target=Target(kind="node", name=node_id), generation=1, tools=TOOLS,
                               agents=RULES)  # fmt: skip
            w.publish(topics.desired_node(node_id), site_identity.site().signed(doc), retain=True)
            deadline = time.monotonic() + 60
            while not any(r["generations"].get(doc.target.key, 0) >= 1 for r in w.on(topics.node_reported(node_id))):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node did not apply the agent rules:\n{node.log()[-3000:]}")
                time.sleep(0.1)
            print(f"node {node_id} ({args.model}, {args.threads} thread(s), {os.cpu_count()} CPUs), {security.mode}")
            print("| rule | machine | reading | expected | got | state | ok | s | steps |")
            print("|---|---|---|---|---|---|---|---|---|")
            results = []
            for s in scenarios:
                r = run_scenario(s, node_id, topics, w, actions, args.timeout)
                results.append(r)
                print(f"| {s.rule} | {s.machine} | {s.reading[0]} {s.reading[1]} | {sorted(s.expect) or 'none'} | "
                      f"{sorted(r.get('actions', {})) or 'none'} | {r['state']} | {'yes' if r['ok'] else 'NO'} | "
                      f"{r['seconds']:.1f} | {' '.join(r.get('steps', [])) or r['why']} |", flush=True)  # fmt: skip
            secs = [r["seconds"] for r in results]
            ok = sum(r["ok"] for r in results)
            mean, median = statistics.mean(secs), statistics.median(secs)
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"agent-eval-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
            path.write_text(json.dumps(results, indent=1, default=lambda o: getattr(o, "__dict__", str(o))))
            print(f"reports: {path}")
            print(f"\nsuccess {ok}/{len(results)} = {ok / max(1, len(results)):.2f}; time per run: "
                  f"mean {mean:.1f} s, median {median:.1f} s, max {max(secs):.1f} s")  # fmt: skip
        finally:
            w.close()
            actions.close()
            node.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
