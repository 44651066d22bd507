"""Releases in waves on real processes: a TLS Mosquitto, an orchestrator with its front door and a
site key, three nodes (group `line`, default small model). Each test releases a template (or an
adapter) of its own name, so the tests do not depend on one another's order; the evaluation sets
are one short greedy case. Direct pushes beside releases: refused to a node a release is moving,
and to a group that requires rollouts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.uploads import upload, upload_file
from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.commands import Command
from edgefleet.proto.knowledge_bundle import BundleDocument, write_bundle
from edgefleet.proto.payloads import CommandResult
from edgefleet.proto.topics import Topics
from tests.conftest import NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, init_site_keys, node_env
from tests.orchestrator.command_client import CommandClient
from tools.make_lora import write_lora

NODES = ("r1", "r2", "r3")
GROUP = "line"
HELLO = "Say hello to the {{ who }}."  # the small model answers "Hello, …"
GOOD = "Greet the {{ who }}: say hello."  # still "…Hello…"
BAD = "Name a color for the {{ who }}."  # no greeting: the quality gate's check fails
# ratios wide open: on a shared 2-core runner latency is noise; these tests gate on quality and health
LOOSE = {"max_p95_ratio": 100.0, "min_tokens_per_s_ratio": 0.01}


@dataclass
class Site:
    broker: Mosquitto
    orchestrator: Orchestrator
    nodes: dict[str, NodeProcess]
    client: CommandClient
    desired: Watcher  # every desired-state document published

    def call(self, op: str, timeout: float = 20, **fields: Any) -> CommandResult:
        return self.client.call(Command(op=op, **fields).dumps(), timeout=timeout)

    def status(self, name: str) -> dict[str, Any]:
        r = self.call("rollout-status", name=name)
        assert r.ok, r.message
        return dict(r.data["rollout"])

    def templates(self) -> dict[str, dict[str, str]]:
        r = self.call("status")
        return {n["node_id"]: n["templates"] for n in r.data["nodes"]} if r.ok else {}

    def push(self, name: str, version: str, body: str) -> None:
        r = self.call("push-template", target=f"group:{GROUP}", template=template(name, version, body), new_group=True)
        assert r.ok, r.message
        ok = wait_for(lambda: all(t.get(name) == version for t in self.templates().values()), timeout=30)
        assert ok, f"{name}@{version} not everywhere: {self.templates()}"

    def wait_done(self, name: str, timeout: float = 180) -> dict[str, Any]:
        """The status once it is final (succeeded, failed or aborted, nothing left to roll back)."""
        final: dict[str, Any] = {}

        def done() -> bool:
            final.update(self.status(name))
            return final["state"] in ("succeeded", "failed", "aborted") and not final["rollback_pending"]

        assert wait_for(done, timeout=timeout, interval=0.3), json.dumps(final.get("events"), indent=1)
        return final

    def node_docs(self, node: str, since: int = 0) -> list[dict[str, Any]]:
        """node:<node> documents published after the watcher's `since`-th message (`mark()`)."""
        topic = Topics.for_site("lab").desired_node(node)
        with self.desired._lock:
            found = [p for t, p in self.desired.messages[since:] if t == topic and p]
        return [json.loads(p) for p in found]

    def mark(self) -> int:
        with self.desired._lock:
            return len(self.desired.messages)

    def log(self) -> str:
        return self.orchestrator.log_path.read_text(errors="replace")


def template(name: str, version: str, body: str) -> dict[str, Any]:
    return {"name": name, "version": version, "template": body, "variables": ["who"]}


def plan(name: str, tpl: str, body: str, *, evaluation: bool = True, **waves: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": name,
        "target": {"kind": "group", "name": GROUP},
        "change": {"section": "templates", "entries": {tpl: template(tpl, "2", body)}},
        "waves": {"canary_count": 1, "steps": [100], "soak_s": 0.5, "apply_timeout_s": 60, **waves},
        "gates": LOOSE,
    }
    if evaluation:
        case = {"id": "greets", "template": tpl, "variables": {"who": "technician"}, "contains": ["hello"]}
        p["evaluation"] = {"name": "greeting", "cases": [{**case, "max_tokens": 12}]}
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp: Path = tmp_path_factory.mktemp("rollouts")
    keys = init_site_keys(tmp / "site")  # adapters are signed artifacts
    broker = Mosquitto(tmp)
    env = {
        "EDGEFLEET_SITE_KEY": str(keys["key"]),
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{free_port()}",  # evaluations go through the front door
        "EDGEFLEET_OPENAI_ADDRESS": "",
        "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5",
        "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
        "EDGEFLEET_ROLLOUT_CASE_TIMEOUT_S": "30",
    }
    orch = Orchestrator(tmp, broker, env=env)
    nodes: dict[str, NodeProcess] = {}
    client = desired = None
    try:
        for n in NODES:
            env = node_env(broker, EDGEFLEET_GROUPS=GROUP, EDGEFLEET_SITE_PUBLIC_KEY=str(keys["pub"]))
            nodes[n] = NodeProcess(tmp, env=env, node_id=n)
        for node in nodes.values():
            node.wait_serving()
        client = CommandClient(broker)
        desired = Watcher(broker, Topics.for_site("lab").all_desired())
        s = Site(broker, orch, nodes, client, desired)
        assert wait_for(lambda: set(NODES) <= set(s.templates()), timeout=30), s.log()[-3000:]
        yield s
    finally:
        for c in (client, desired):
            if c is not None:
                c.close()
        for node in nodes.values():
            node.stop()
        orch.stop()
        broker.stop()


def versions_seen(site: Site, node: str, tpl: str, since: int) -> list[str | None]:
    """The version of `tpl` in each node:<node> document published since `since` (None: not in it)."""
    return [d["templates"].get(tpl, {}).get("version") for d in site.node_docs(node, since)]


def test_a_release_failing_its_quality_gate_on_the_canary_is_rolled_back_there_alone(site: Site) -> None:
    site.push("greet-a", "1", HELLO)
    mark = site.mark()
    r = site.call("rollout-start", plan=plan("bad", "greet-a", BAD))
    assert r.ok, r.message
    started = time.monotonic()
    s = site.wait_done("bad")
    print(f"rollout bad: start -> failed and rolled back in {time.monotonic() - started:.1f} s")
    assert s["state"] == "failed", s["events"]
    canary, rest = s["waves"]
    assert canary["nodes"] == ["r1"] and canary["state"] == "rolled_back"
    assert rest["state"] == "pending" and not rest["generations"]
    quality = next(v for v in canary["verdicts"] if v["gate"] == "quality")
    assert not quality["passed"]
    assert quality["figures"]["score_before"] == 1.0 and quality["figures"]["score_after"] == 0.0
    assert "quality gate failed" in s["reason"] and "fell from 1.00 to 0.00" in s["reason"]
    # the canary is back on version 1; the other nodes never got a document carrying version 2
    assert wait_for(lambda: site.templates()["r1"].get("greet-a") == "1", timeout=20), site.templates()
    assert versions_seen(site, "r1", "greet-a", mark) == ["2", None]
    for n in ("r2", "r3"):
        assert all(v is None for v in versions_seen(site, n, "greet-a", mark)), site.node_docs(n, mark)
        assert site.templates()[n]["greet-a"] == "1"


def test_a_good_release_moves_wave_by_wave_to_every_node(site: Site) -> None:
    site.push("greet-b", "1", HELLO)
    mark = site.mark()
    r = site.call("rollout-start", plan=plan("good", "greet-b", GOOD, steps=[50, 100]))
    assert r.ok, r.message
    assert [w["nodes"] for w in r.data["rollout"]["waves"]] == [["r1"], ["r2"], ["r3"]]
    s = site.wait_done("good")
    assert s["state"] == "succeeded", s["events"]
    first = s["waves"][0]
    print(  # the figure the closing note quotes: from `rollout start` to the canary's gate verdict
        f"rollout good: start -> canary gate verdict {first['finished_at'] - s['created_at']:.2f} s "
        f"(baseline {first['applied_at'] - s['created_at']:.2f} s, move "
        f"{first['soak_started_at'] - first['applied_at']:.2f} s, soak 0.5 s, evaluation "
        f"{first['finished_at'] - first['soak_started_at'] - 0.5:.2f} s); whole release "
        f"{s['updated_at'] - s['created_at']:.1f} s"
    )
    for w in s["waves"]:
        assert w["state"] == "passed" and [v["gate"] for v in w["verdicts"]] == ["health", "service", "quality"]
        assert all(v["passed"] for v in w["verdicts"])
    # wave by wave: each wave was published after the wave before it passed
    for before, after in zip(s["waves"], s["waves"][1:], strict=False):
        assert after["applied_at"] >= before["finished_at"]
    assert wait_for(lambda: all(t.get("greet-b") == "2" for t in site.templates().values()), timeout=20)
    # completed: version 2 is in the group's document, and the node overrides are gone again
    group = site.desired.on(Topics.for_site("lab").desired_group(GROUP))[-1]
    assert group["templates"]["greet-b"]["version"] == "2"
    for n in NODES:
        assert versions_seen(site, n, "greet-b", mark) == ["2", None]


def test_an_orchestrator_killed_mid_rollout_neither_skips_a_gate_nor_repeats_a_wave(site: Site) -> None:
    site.push("greet-c", "1", HELLO)
    mark = site.mark()
    r = site.call("rollout-start", plan=plan("restart", "greet-c", GOOD, soak_s=4))
    assert r.ok, r.message
    assert wait_for(lambda: site.status("restart")["waves"][0]["state"] == "soaking", timeout=60)
    proc = site.orchestrator.proc
    assert proc is not None
    proc.kill()  # kill -9: no goodbye, whatever was in memory is gone
    proc.wait()
    site.orchestrator.start()
    s = site.wait_done("restart")
    assert s["state"] == "succeeded", s["events"]
    messages = [e["message"] for e in s["events"]]
    assert any("orchestrator restarted: running at wave 1 soaking" in m for m in messages), messages
    for i, w in enumerate(s["waves"]):
        assert [v["gate"] for v in w["verdicts"]] == ["health", "service", "quality"], "no gate skipped"
        published = [m for m in messages if m.startswith(f"wave {i + 1}: published to")]
        assert len(published) == 1, f"wave {i + 1} applied once: {published}"
    for n in NODES:  # one document carrying version 2 per node: no wave was published again
        assert versions_seen(site, n, "greet-c", mark) == ["2", None], site.node_docs(n, mark)


def test_abort_returns_every_moved_node_to_the_previous_generation(site: Site) -> None:
    site.push("greet-d", "1", HELLO)
    mark = site.mark()
    p = plan("abort", "greet-d", GOOD, evaluation=False, steps=[50, 100], soak_s=600)
    assert site.call("rollout-start", plan=p).ok
    assert wait_for(lambda: site.status("abort")["waves"][0]["state"] == "soaking", timeout=60)
    r = site.call("rollout-promote", name="abort")  # the canary's soak cut short; its health gate still runs
    assert r.ok, r.message
    assert wait_for(lambda: site.status("abort")["waves"][1]["state"] == "soaking", timeout=60)
    assert wait_for(lambda: site.templates()["r2"].get("greet-d") == "2", timeout=20)
    r = site.call("rollout-abort", name="abort")
    assert r.ok and "aborted" in r.message, r.message
    s = site.wait_done("abort")
    assert s["state"] == "aborted" and [w["state"] for w in s["waves"]] == ["rolled_back", "rolled_back", "pending"]
    assert wait_for(lambda: all(t.get("greet-d") == "1" for t in site.templates().values()), timeout=20)
    for n in ("r1", "r2"):
        assert versions_seen(site, n, "greet-d", mark) == ["2", None]
    assert all(v is None for v in versions_seen(site, "r3", "greet-d", mark))
    again = site.call("rollout-resume", name="abort")
    assert not again.ok and again.field == "name" and "aborted" in again.message


def adapters(site: Site) -> dict[str, dict[str, Any]]:
    r = site.call("adapters")
    return dict(r.data["nodes"]) if r.ok else {}


def test_an_adapter_release_reaches_its_canary_alone_and_direct_pushes_to_its_nodes_are_refused(
    site: Site, tmp_path: Path
) -> None:
    base = resolve_model(None, tmp_path / "models").path
    lora = write_lora(base, tmp_path / "fix.gguf", rank=2, std=0.001)

    def send(c: Command) -> CommandResult:
        return site.client.call(c.dumps(), timeout=20)

    sha, r = upload_file(send, lora)
    assert r.ok, r.message
    r = site.call("push-adapter", target=f"group:{GROUP}", name="fix", version="1", sha256=sha, upload_only=True)
    assert r.ok and "fix@1" in r.message and "no target changed" in r.message, r.message
    ref = r.data["ref"]
    assert (ref["version"], ref["sha256"], ref["size"]) == ("1", sha, lora.stat().st_size)
    bundle = write_bundle([BundleDocument("a.md", "Pump P-7 runs at 1450 rpm.", {"source": "a.md"})])
    ksha, r = upload(send, bundle)
    assert r.ok, r.message
    r = site.call("push-knowledge", target=f"group:{GROUP}", name="manuals", version="1", sha256=ksha, upload_only=True)
    assert r.ok and r.data["ref"]["sha256"] == ksha and "no target changed" in r.message, r.message
    assert not site.call("adapters").data["desired"]  # signed and kept, but desired nowhere

    p = {
        "name": "fix-1",
        "target": {"kind": "group", "name": GROUP},
        "change": {"section": "adapters", "entries": {"fix": ref}},
        "waves": {"canary": ["r1"], "steps": [100], "soak_s": 600, "apply_timeout_s": 120},
        "gates": LOOSE,
    }
    r = site.call("rollout-start", plan=p)
    assert r.ok, r.message
    # the canary moved (it fetched and loaded the adapter: the health gate waits for it), the others did not
    assert wait_for(lambda: site.status("fix-1")["waves"][0]["state"] == "soaking", timeout=120), site.status("fix-1")
    nodes = adapters(site)
    assert nodes["r1"]["loaded"].get("fix") == "1", nodes
    assert all("fix" not in nodes[n]["loaded"] and "fix" not in nodes[n]["desired"] for n in ("r2", "r3")), nodes

    # a direct push to a node the release is moving (the canary, or one of a wave to come) is refused
    for node in ("r1", "r2"):
        r = site.call("push-template", target=f"node:{node}", template=template("solo", "1", HELLO))
        assert not r.ok and r.code == "command_refused" and r.field == "target", r
        assert f"node {node} is in release fix-1 (running, wave 1/2 soaking)" in r.message, r.message
        assert "edgefleet fleet rollout abort fix-1" in r.message, r.message
    assert site.call("rm-adapter", target="node:r1", name="fix").code == "command_refused"

    assert site.call("rollout-abort", name="fix-1").ok
    assert site.wait_done("fix-1")["state"] == "aborted"
    assert wait_for(lambda: "fix" not in adapters(site)["r1"]["loaded"], timeout=60), adapters(site)
    r = site.call("push-template", target="node:r2", template=template("solo", "1", HELLO))  # free again
    assert r.ok, r.message
    assert site.call("rm-template", target="node:r2", name="solo").ok


def test_a_group_that_requires_rollouts_refuses_direct_pushes_and_takes_a_release(site: Site) -> None:
    site.push("greet-e", "1", HELLO)
    r = site.call("group-policy", group=GROUP, require_rollouts=True)
    assert r.ok and r.data["requiring_rollouts"] == [GROUP], r.message
    try:
        r = site.call("push-template", target=f"group:{GROUP}", template=template("greet-e", "2", GOOD))
        assert not r.ok and r.code == "command_refused" and r.field == "target", r
        assert f"group {GROUP} requires rollouts" in r.message and "edgefleet fleet rollout start" in r.message
        r = site.call("push-template", target="node:r3", template=template("greet-e", "2", GOOD))
        assert not r.ok and f"node r3 is in group {GROUP}, which requires rollouts" in r.message, r.message
        r = site.call("rollout-start", plan=plan("policy", "greet-e", GOOD, evaluation=False))
        assert r.ok, r.message
        assert site.wait_done("policy")["state"] == "succeeded"
        assert wait_for(lambda: all(t.get("greet-e") == "2" for t in site.templates().values()), timeout=20)
        r = site.call("group-policy", group="nosuch", require_rollouts=True)
        assert not r.ok and r.code == "not_found" and r.field == "group" and GROUP in r.message, r
    finally:
        r = site.call("group-policy", group=f"group:{GROUP}", require_rollouts=False)
        assert r.ok and r.data["requiring_rollouts"] == [], r.message
    site.push("greet-e", "3", GOOD)  # direct pushes go at once again
