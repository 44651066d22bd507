"""The evaluation runner on a real site: a Mosquitto broker, the orchestrator in this process (its
front door on, the runner calling it as the rollout driver does) and one real node with the default
model, holding a template (pushed with the CLI) and a knowledge collection (ingested over gRPC)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.orchestrator.fleet_view import NodeSnapshot
from edgefleet.orchestrator.rollouts.evaluation import EvaluationRunner, EvaluationUnavailable
from edgefleet.orchestrator.runtime import Orchestrator, build_orchestrator
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.proto.evaluation_sets import EvaluationSet, parse_evaluation_set
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto, fleet, node_env

NODE = "ev-a"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "open_ticket",
            "description": "Open a maintenance ticket for a machine.",
            "parameters": {"type": "object", "properties": {"machine": {"type": "string"}}, "required": ["machine"]},
        },
    }
]
MANUAL = "# Pump 3\n\nThe pump 3 filter is changed every 500 hours. Alarm A03 means no glycol flow.\n"


@dataclass
class Site:
    broker: Mosquitto
    orch: Orchestrator
    node: NodeProcess

    def snapshot(self) -> NodeSnapshot | None:
        return self.orch.view.snapshot().node(NODE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("evaluation")
    broker = Mosquitto(tmp)
    with pytest.MonkeyPatch.context() as mp:  # the orchestrator's own certificate, only while its settings are read
        for k, v in site_identity.site().orchestrator_env().items():
            mp.setenv(k, v)
        settings = OrchestratorSettings(
            mqtt_url=broker.url,
            site="lab",
            registry_db=tmp / "registry.db",
            artifact_dir=tmp / "artifacts",
            front_door_address=f"127.0.0.1:{free_port()}",
            openai_address="",
            metrics_address="",
        )
    orch = build_orchestrator(settings)
    orch.start()
    node: NodeProcess | None = None
    try:
        node = NodeProcess(tmp, env=node_env(broker), node_id=NODE)
        node.wait_serving()
        s = Site(broker, orch, node)
        template = tmp / "triage.yaml"
        template.write_text(
            "system: You are a maintenance assistant. Answer in one short sentence.\n"
            "template: 'Sensor {{ sensor }} reports {{ reading }}. What should the technician check first?'\n"
        )
        assert wait_for(lambda: s.snapshot() is not None and s.snapshot().state == "online", timeout=30)  # type: ignore[union-attr]
        r = fleet(broker, "fleet", "push-template", str(template), "--name", "triage", "--version", "1",
                  "--target", NODE)  # fmt: skip
        assert r.returncode == 0, r.stderr
        doc = pb.Document(id="manuals/pump 3.md", text=MANUAL)
        node.stub.Ingest(pb.IngestRequest(collection="manual", documents=[doc]), timeout=60)
        ready = wait_for(
            lambda: (n := s.snapshot()) is not None and "triage" in n.templates and n.has_collection("manual"),
            timeout=30,
        )
        assert ready, f"the fleet view never showed the template and the collection: {s.snapshot()}"
        yield s
    finally:
        if node is not None:
            node.stop()
        orch.stop()
        broker.stop()


def _set(*cases: dict[str, object]) -> EvaluationSet:
    return parse_evaluation_set({"name": "test", "cases": list(cases)})


def test_every_kind_of_case_scored_through_the_front_door(site: Site) -> None:
    schema = {"type": "object", "properties": {"fault": {"type": "boolean"}}, "required": ["fault"]}
    cases = _set(
        dict(id="prompt", prompt="Say hello.", max_tokens=8, pattern=r"\S", contains=["zzz-never-said"]),
        dict(id="template", template="triage", variables={"sensor": "pump-3", "reading": "7.1 mm/s"}, max_tokens=12),
        dict(id="json", prompt="Is 7.1 mm/s over a 4.5 limit? Answer in JSON.", max_tokens=24, json_schema=schema),
        dict(
            id="rag",
            prompt="When is the filter changed?",
            collection="manual",
            source="manuals/pump 3.md",
            max_tokens=8,
        ),
        dict(
            id="tool",
            prompt="Pump 3 leaks: open a ticket.",
            tools=TOOLS,
            tool_choice="required",
            tool="open_ticket",
            max_tokens=64,  # the call whole: one cut by max_tokens is no call
        ),
    )
    runner = EvaluationRunner(site.orch.front_door, case_timeout_s=60)
    detailed = runner.run_detailed([NODE], cases)
    scores = {s.case: s for s in detailed[NODE].scores}
    assert all(not s.error for s in scores.values()), {k: s.error for k, s in scores.items()}
    assert scores["prompt"].checks == {"pattern": True, "contains:zzz-never-said": False}
    assert scores["template"].checks == {"answered": True}
    assert scores["json"].checks == {"json_schema": True}  # constrained by the node's grammar
    assert scores["rag"].checks == {"source": True}  # the collection's only document is retrieved
    assert scores["tool"].checks == {"tool": True}  # `required` with one tool: that tool is called
    f = detailed[NODE].figures
    assert (f.cases, f.errors, f.schema_failures) == (5, 0, 0)
    assert f.score == round(5 / 6, 6)
    assert f.p95_ms > 0 and f.tokens_per_s > 0
    assert runner.run([NODE], cases)[NODE].score == f.score  # greedy: the same answers again


def test_failures_are_errors_never_a_crash(site: Site) -> None:
    cases = _set(
        {"id": "ok", "prompt": "Say hello.", "max_tokens": 4},
        {"id": "no-template", "template": "nope", "max_tokens": 4, "contains": ["x"]},
        {"id": "no-collection", "prompt": "Hi", "collection": "nothing", "source": "a.md", "max_tokens": 4},
    )
    out = EvaluationRunner(site.orch.front_door, case_timeout_s=30).run_detailed([NODE, "no-such-node"], cases)
    mine = {s.case: s for s in out[NODE].scores}
    assert not mine["ok"].error and "no_node" in mine["no-template"].error, mine
    assert mine["no-collection"].error and mine["no-collection"].checks == {"source": False}
    assert (out[NODE].figures.errors, out[NODE].figures.score) == (2, round(1 / 3, 6))
    ghost = out["no-such-node"].figures
    assert (ghost.errors, ghost.cases, ghost.score, ghost.p95_ms) == (3, 3, 0.0, 0.0)
    # a case past its timeout is an error too (greedy, this answer takes ~200 ms here), and frees the slot
    slow = _set({"id": "long", "prompt": "Count from one to one hundred in words.", "max_tokens": 400},
                {"id": "short", "prompt": "Say hi.", "max_tokens": 4})  # fmt: skip
    timed = EvaluationRunner(site.orch.front_door, case_timeout_s=0.05).run_detailed([NODE], slow)[NODE].scores
    assert "0.05s" in timed[0].error or "deadline_exceeded" in timed[0].error, timed[0]
    again = EvaluationRunner(site.orch.front_door, case_timeout_s=30).run([NODE], _set({"id": "s", "prompt": "Hi."}))
    assert again[NODE].errors == 0


def test_without_a_running_front_door_it_refuses(tmp_path: Path) -> None:
    from edgefleet.orchestrator.fleet_view import FleetView
    from edgefleet.orchestrator.front_door.server import FrontDoor

    off = FrontDoor(OrchestratorSettings(front_door_address="", openai_address="", metrics_address=""), FleetView())
    with pytest.raises(EvaluationUnavailable, match="front door is not running"):
        EvaluationRunner(off).run([NODE], _set({"id": "a", "prompt": "x"}))
