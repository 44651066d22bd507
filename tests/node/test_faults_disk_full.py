"""A node whose data directory fills up (an SD card): a real 40 MiB tmpfs, a real node, a real broker.

What must hold while the disk is full: Ingest answers RESOURCE_EXHAUSTED naming the store and the
free space; sensor messages stay with the broker (unacknowledged), counted as `holding`, with an
error report; a new desired state is refused with an error report; DeleteDocuments gives space
back. When room is back, the held messages and the desired state are taken by themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.proto.payloads import DesiredState, Target, TemplateSpec
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import NodeProcess, wait_for
from tests.disk_support import fill, free_bytes, small_disk
from tests.mqtt_support import Mosquitto, Watcher, node_env

NODE = "sd1"
TOPICS = Topics.for_site("lab")
WORDS = ["pump", "valve", "bearing", "seal", "motor", "gasket", "flange", "impeller", "housing", "shaft", "rotor"]


def big_text(seed: int, n_bytes: int) -> str:
    out, i = [], seed
    size = 0
    while size < n_bytes:
        i = (i * 1103515245 + 12345) % 2**31
        para = " ".join(f"{WORDS[(i >> k) % len(WORDS)]}{(i >> k) % 997}" for k in range(0, 24, 2)) + ".\n\n"
        out.append(para)
        size += len(para)
    return "".join(out)


def desired(generation: int, template_version: str) -> bytes:
    doc = DesiredState(
        site="lab",
        target=Target(kind="node", name=NODE),
        generation=generation,
        templates={
            "ask": TemplateSpec(name="ask", version=template_version, template="Reading {{ v }}. OK?", variables=["v"])
        },
        rules={
            "probe": RuleSpec(
                name="probe",
                version="1",
                topic_filter="probe/+/reading",
                template="ask",
                variables={"v": "payload.v"},
                max_tokens=2,
            )
        },
    )
    return site_identity.site().signed(doc)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("diskfull")
    broker = Mosquitto(tmp)
    watcher = Watcher(broker, "edgefleet/lab/#")
    results = Watcher(broker, "edgefleet/lab/results/#")
    with small_disk(tmp / f"data-{NODE}", 40) as data:
        watcher.publish(TOPICS.desired_node(NODE), desired(1, "1"), retain=True)
        node = NodeProcess(
            tmp, node_id=NODE, env=node_env(broker, EDGEFLEET_DISK_WARN_MB="20", EDGEFLEET_MAX_DOCUMENT_BYTES="2000000")
        )
        try:
            node.wait_serving()
            yield {"node": node, "broker": broker, "watcher": watcher, "results": results, "data": data}
        finally:
            node.stop()
            watcher.close()
            results.close()
            broker.stop()


def telemetry(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.node_telemetry(NODE))


def reported(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.node_reported(NODE))


def errors(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.errors(NODE))


def test_full_data_dir(env: dict[str, Any]) -> None:
    node: NodeProcess = env["node"]
    w: Watcher = env["watcher"]
    data: Path = env["data"]
    assert wait_for(lambda: any(r["generations"].get(f"node:{NODE}") == 1 for r in reported(w)), timeout=10)

    # Space in GetNodeInfo and telemetry.
    info = node.info()
    assert 0 < info.disk_free_bytes <= info.disk_total_bytes <= 41 * 1024 * 1024
    assert wait_for(lambda: any(t.get("disk_total_bytes") for t in telemetry(w)), timeout=10)

    # A collection that takes room, then a full disk.
    docs = [pb.Document(id=f"d{i}", text=big_text(i, 1_500_000)) for i in range(2)]
    node.stub.Ingest(pb.IngestRequest(collection="big", documents=docs), timeout=120)
    filler = fill(data, leave_bytes=0)
    assert free_bytes(data) < 64 * 1024
    assert wait_for(lambda: "disk space low" in node.log(), timeout=10)
    assert wait_for(lambda: any(t.get("disk_low") for t in telemetry(w)), timeout=10)
    assert node.info().disk_low

    # Ingest: RESOURCE_EXHAUSTED naming the store and the free space.
    with pytest.raises(grpc.RpcError) as e:
        node.stub.Ingest(
            pb.IngestRequest(collection="more", documents=[pb.Document(id="x", text=big_text(9, 1_900_000))]),
            timeout=60,
        )
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "knowledge" in e.value.details() and "free" in e.value.details(), e.value.details()

    # A sensor message: held unacknowledged, counted, reported; no answer yet.
    w.publish("probe/p1/reading", json.dumps({"id": "m1", "v": 3}).encode())
    assert wait_for(lambda: any(t.get("holding", 0) >= 1 for t in telemetry(w)), timeout=10), telemetry(w)[-1:]
    assert wait_for(lambda: any(r["code"] == "storage_full" for r in errors(w)), timeout=10), errors(w)
    assert not env["results"].messages

    # A new desired state: refused with a report, not applied yet.
    w.publish(TOPICS.desired_node(NODE), desired(2, "2"), retain=True)
    assert wait_for(
        lambda: sum(r["code"] == "storage_full" and "desired" in r["topic"] for r in errors(w)) >= 1, timeout=10
    ), errors(w)
    assert not any(r["generations"].get(f"node:{NODE}") == 2 for r in reported(w))

    # DeleteDocuments on the full disk works and gives the space back.
    before = free_bytes(data)
    deleted = node.stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="big", ids=["d0", "d1"]), timeout=60)
    assert deleted.deleted == 2
    freed = free_bytes(data) - before
    assert freed > 8 * 1024 * 1024, f"only {freed} bytes given back"

    # With room again, the held message and the desired state are taken without a restart.
    filler.unlink()
    assert wait_for(lambda: any(r["generations"].get(f"node:{NODE}") == 2 for r in reported(w)), timeout=15)
    assert wait_for(lambda: bool(env["results"].messages), timeout=20)
    answer = json.loads(env["results"].messages[0][1])
    assert answer["source_id"] == "m1" and answer["ok"], answer
    # the node says so in its telemetry: nothing held, the disk no longer low
    assert wait_for(lambda: telemetry(w)[-1]["holding"] == 0 and not telemetry(w)[-1]["disk_low"], timeout=10), (
        telemetry(w)[-1]
    )
    small = pb.IngestRequest(collection="more", documents=[pb.Document(id="x", text="a small one")])
    node.stub.Ingest(small, timeout=60)
