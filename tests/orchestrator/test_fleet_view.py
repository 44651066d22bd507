"""The fleet view: snapshots built by ingest from real payloads, rebuilt from the registry, safe to read anywhere."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.fleet_view import FleetView, NodeSnapshot
from edgefleet.orchestrator.ingest import Ingest
from edgefleet.orchestrator.registry import Registry, open_registry
from edgefleet.proto.payloads import (
    DesiredState,
    ErrorReport,
    ModelRef,
    NodeInfoPayload,
    NodeStatus,
    ReportedState,
    Target,
    Telemetry,
    TemplateSpec,
    parse_payload,
)
from edgefleet.proto.topics import Topics

TOPICS = Topics.for_site("lab")


class Site:
    """Ingest into a real registry file and a view; what the orchestrator would publish is kept in `sent`."""

    def __init__(self, tmp: Path) -> None:
        self.registry = Registry(open_registry(tmp / "registry.db"))
        self.view = FleetView()
        self.sent: list[tuple[str, bytes]] = []
        errors = ErrorReporter(TOPICS, lambda topic, payload: self.sent.append((topic, payload)))
        self.ingest = Ingest("lab", TOPICS, self.registry, self.view, errors)

    def online(self, node_id: str, groups: list[str], address: str = "10.0.0.7:50051") -> None:
        info = NodeInfoPayload(
            profile="x86-dev", groups=groups, model=ModelRef(name="smollm2", quantization="Q4_1"), grpc_address=address
        )
        status = NodeStatus(node_id=node_id, state="online", info=info)
        self.ingest.node_status(TOPICS.node_status(node_id), status.dumps())

    def telemetry(self, node_id: str, busy: int, queue: int, tps: float = 41.5) -> None:
        t = Telemetry(
            node_id=node_id,
            queue_depth=queue,
            slots_busy=busy,
            slots_total=4,
            slots_available=4 - busy,
            tokens_per_second=tps,
            temperature_c=61.0,
            throttled=False,
            shedding=False,
            rss_bytes=1 << 28,
        )
        self.ingest.telemetry(TOPICS.node_telemetry(node_id), t.dumps())

    def desired(self, target: str, generation: int, templates: dict[str, str]) -> None:
        kind, name = target.split(":")
        doc = DesiredState(
            site="lab",
            target=Target(kind=kind, name=name),  # type: ignore[arg-type]
            generation=generation,
            templates={n: TemplateSpec(name=n, version=v, template="hi") for n, v in templates.items()},
        )
        topic = TOPICS.desired_group(name) if kind == "group" else TOPICS.desired_node(name)
        self.ingest.desired(topic, doc.dumps())

    def reported(self, node_id: str, generations: dict[str, int], templates: dict[str, str]) -> None:
        rep = ReportedState(
            node_id=node_id,
            generations=generations,
            templates=templates,
            adapters={"fix": "2"},
            knowledge={"plant": "1"},
        )
        self.ingest.reported(TOPICS.node_reported(node_id), rep.dumps())


def test_ingest_of_real_payloads_fills_the_snapshot(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.online("alpha", ["x86-dev", "line-1"])
    site.telemetry("alpha", busy=3, queue=2)
    site.desired("group:line-1", 2, {"fault": "7"})
    site.reported("alpha", {"group:line-1": 1}, {"fault": "6"})
    snap = site.view.snapshot()
    a = snap.node("alpha")
    assert a is not None
    assert (a.state, a.address, a.profile, a.model, a.groups) == (
        "online",
        "10.0.0.7:50051",
        "x86-dev",
        "smollm2",
        ("x86-dev", "line-1"),
    )
    assert a.load is not None and (a.load.slots_total, a.load.slots_busy, a.load.queue_depth) == (4, 3, 2)
    assert (a.load.tokens_per_second, a.load.temperature_c) == (41.5, 61.0)
    assert (
        dict(a.templates) == {"fault": "6"}
        and dict(a.adapters) == {"fix": "2"}
        and dict(a.collections) == {"plant": "1"}
    )
    assert dict(a.desired_generations) == {"group:line-1": 2} and dict(a.reported_generations) == {"group:line-1": 1}
    assert a.generation_behind and not a.in_sync
    assert "group:line-1 at generation 1, desired 2" in a.drift and "template fault at 6, desired 7" in a.drift
    assert snap.in_group("line-1") == [a] and snap.online() == [a]

    site.reported("alpha", {"group:line-1": 2}, {"fault": "7"})
    b = site.view.snapshot().node("alpha")
    assert b is not None and not b.generation_behind
    assert b.drift == ("adapter fix not desired",)
    # the registry's `fleet status` rows and the view describe drift the same way
    assert list(b.drift) == site.registry.rows()[0].drift
    assert a.templates["fault"] == "6", "a snapshot taken earlier never changes"


@pytest.mark.parametrize(
    ("state", "reason"),
    [("offline", "shutdown"), ("offline", "connection lost"), ("failed", "engine failure: llama_decode returned -3")],
)
def test_the_state_a_node_publishes_is_its_state_with_the_reason(tmp_path: Path, state: str, reason: str) -> None:
    site = Site(tmp_path)
    site.online("kappa", ["g"])
    bye = NodeStatus.model_validate({"node_id": "kappa", "state": state, "reason": reason})
    site.ingest.node_status(TOPICS.node_status("kappa"), bye.dumps())
    n = site.view.snapshot().node("kappa")
    assert n is not None and (n.state, n.state_reason, n.since) == (state, reason, bye.ts)
    assert n.address == "10.0.0.7:50051", "what the node told when online is kept while it is away"
    assert site.view.snapshot().online() == []
    site.online("kappa", ["g"])
    back = site.view.snapshot().node("kappa")
    assert back is not None and (back.state, back.state_reason) == ("online", "")


def test_refused_input_never_reaches_the_view_and_is_reported_with_its_code(tmp_path: Path) -> None:
    site = Site(tmp_path)
    impostor = NodeStatus(node_id="alpha", state="online")
    site.ingest.node_status(TOPICS.node_status("beta"), impostor.dumps())
    site.ingest.telemetry(TOPICS.node_telemetry("beta"), b"{not json")
    assert site.view.snapshot().nodes == {}
    codes = [parse_payload(ErrorReport, p).code for _, p in site.sent]
    assert codes == ["wrong_node", "invalid_payload"]
    site.online("beta", ["g"])
    report = ErrorReport(source="beta", code="queue_full", message="every slot busy")
    site.ingest.node_error(TOPICS.errors("beta"), report.dumps())
    site.ingest.node_error(TOPICS.errors("beta"), ErrorReport(source="alpha", code="x", message="forged").dumps())
    beta = site.view.snapshot().node("beta")
    assert beta is not None and beta.last_error is not None and beta.last_error.message == "every slot busy"


def without_times(n: NodeSnapshot | None) -> NodeSnapshot:
    assert n is not None
    return dataclasses.replace(n, last_seen=0.0, last_error=None)


def test_a_view_rebuilt_from_the_registry_equals_the_one_ingest_built(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.online("alpha", ["line-1"])
    site.online("beta", ["line-2"], address="10.0.0.8:50051")
    site.ingest.node_status(
        TOPICS.node_status("beta"), NodeStatus(node_id="beta", state="failed", reason="engine failure").dumps()
    )
    site.telemetry("alpha", busy=1, queue=0)
    site.desired("group:line-1", 3, {"fault": "1"})
    site.reported("alpha", {"group:line-1": 3}, {"fault": "1"})
    rebuilt = FleetView()
    rebuilt.rebuild(Registry(open_registry(tmp_path / "registry.db")).node_records(), site.registry.all_desired())
    live, again = site.view.snapshot(), rebuilt.snapshot()
    assert set(again.nodes) == {"alpha", "beta"} and again.desired_generations == live.desired_generations
    for node_id in ("alpha", "beta"):
        assert without_times(again.node(node_id)) == without_times(live.node(node_id))
    beta = again.node("beta")
    assert beta is not None and beta.state == "failed" and beta.address == "10.0.0.8:50051"


def test_snapshots_are_immutable(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.online("alpha", ["g"])
    snap = site.view.snapshot()
    a = snap.node("alpha")
    assert a is not None
    with pytest.raises(TypeError):
        snap.nodes["beta"] = a  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.state = "failed"  # type: ignore[misc]


def test_readers_see_whole_snapshots_while_a_writer_replaces_them(tmp_path: Path) -> None:
    """Each telemetry of round i has busy == queue == i for every node; a reader must never see a torn
    node, a snapshot that changes after it was taken, or versions going back."""
    site = Site(tmp_path)
    nodes = [f"n{i}" for i in range(12)]
    for n in nodes:
        site.online(n, ["g"])
    view = FleetView()
    view.rebuild(site.registry.node_records(), {})
    rounds, stop = 400, threading.Event()
    problems: list[str] = []
    seen_versions: list[int] = []

    def writer() -> None:
        for i in range(1, rounds + 1):
            for n in nodes:
                t = Telemetry(
                    node_id=n,
                    queue_depth=i,
                    slots_busy=i,
                    slots_total=rounds,
                    slots_available=0,
                    tokens_per_second=1.0,
                    temperature_c=None,
                    throttled=False,
                    shedding=False,
                    rss_bytes=1,
                )
                view.apply_telemetry(t)
        stop.set()

    def reader() -> None:
        last, held = 0, []
        while not stop.is_set() or len(held) < 5:
            snap = view.snapshot()
            if snap.version < last:
                problems.append(f"version went back {last} -> {snap.version}")
            last = snap.version
            loads = {n.node_id: (n.load.queue_depth, n.load.slots_busy) for n in snap.nodes.values() if n.load}
            if any(q != b for q, b in loads.values()):
                problems.append(f"torn node in version {snap.version}")
            held.append((snap, loads))
            time.sleep(0)
        for snap, loads in held:
            now = {n.node_id: (n.load.queue_depth, n.load.slots_busy) for n in snap.nodes.values() if n.load}
            if now != loads:
                problems.append(f"snapshot {snap.version} changed after it was taken")
        seen_versions.append(last)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    w = threading.Thread(target=writer)
    for t in [*readers, w]:
        t.start()
    for t in [w, *readers]:
        t.join(60)
    assert not problems, problems[:5]
    assert len(seen_versions) == 4 and max(seen_versions) > 1
    final = view.snapshot()
    assert {n.load.queue_depth for n in final.nodes.values() if n.load} == {rounds}
    assert final.version == 1 + rounds * len(nodes)
