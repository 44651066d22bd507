"""`fleet status` at 1,200 nodes: paged answers, filters and the summary, through the real CLI.

The defect (issue 23): past ~780 nodes every `fleet status` failed with `refused (internal):
unreadable answer from the orchestrator: payload is 333564 bytes; the limit is 262144`. Here a
real orchestrator on a real Mosquitto starts on a registry of 1,200 nodes (written with the
registry's own writes before it starts: no simulated node takes part) and the CLI lists them.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet import identity_commands
from edgefleet.fleet.site.pki import SitePki
from edgefleet.orchestrator.registry import Registry, open_registry
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, ReportedState, TransferProgress
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, fleet

NODES = 1200


def spec(i: int) -> dict[str, Any]:
    """What node i is: its group, profile, model, state, and whether it drifted or has an error."""
    return {
        "node_id": f"scale-{i:04d}",
        "group": f"line-{i % 4}",
        "profile": "orin" if i % 2 else "pi5",
        "model": "llama" if i % 3 == 0 else "qwen",
        "state": "failed" if i % 100 == 0 else "offline" if i % 10 == 1 else "online",
        "drifted": i % 50 == 7,  # reports a template nothing desires
        "transfer_failed": i % 60 == 5,
        "reported": i % 7 != 3,  # the rest never reported: sync unknown
    }


SPECS = [spec(i) for i in range(NODES)]


def ids(pred: Any) -> set[str]:
    return {s["node_id"] for s in SPECS if pred(s)}


def populate(db: Path) -> None:
    registry = Registry(open_registry(db))
    for s in SPECS:
        info = NodeInfoPayload(profile=s["profile"], groups=[s["group"]], model=ModelRef(name=s["model"]))
        registry.record_status(NodeStatus(node_id=s["node_id"], state=s["state"], info=info))
        if not s["reported"]:
            continue
        failed = TransferProgress(kind="adapter", name="a", version="1", have=0, total=4, state="failed", error="x")
        registry.record_reported(
            ReportedState(
                node_id=s["node_id"],
                templates={"stray": "1"} if s["drifted"] else {},
                transfers={"adapter/a": failed} if s["transfer_failed"] else {},
            )
        )
    registry.db.conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    tmp = tmp_path_factory.mktemp("status-paging")
    populate(tmp / "registry.db")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker, db=tmp / "registry.db")
    try:
        assert wait_for(lambda: status(broker, "--limit", "0").returncode == 0, 30), orch.log_path.read_text()[-2000:]
        yield broker
    finally:
        orch.stop()
        broker.stop()


def status(broker: Mosquitto, *args: str) -> Any:
    return fleet(broker, "--timeout", "30", "fleet", "status", "--json", *args)


def listed(broker: Mosquitto, *args: str) -> list[str]:
    r = status(broker, *args)
    assert r.returncode == 0, r.stderr
    return [n["node_id"] for n in json.loads(r.stdout)]


def test_status_lists_every_one_of_1200_nodes_in_one_json_document(site: Mosquitto) -> None:
    t0 = time.monotonic()
    r = status(site)
    took = time.monotonic() - t0
    print(f"\nfleet status --json at {NODES} nodes: {took:.2f} s, {len(r.stdout)} bytes of JSON")
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)
    assert [n["node_id"] for n in nodes] == sorted(s["node_id"] for s in SPECS)  # each once, by id
    assert took < 60, "does not hang"


def test_filters_return_the_right_nodes(site: Mosquitto) -> None:
    assert set(listed(site, "--group", "line-1")) == ids(lambda s: s["group"] == "line-1")
    assert set(listed(site, "--state", "failed")) == ids(lambda s: s["state"] == "failed")
    both = ids(lambda s: s["profile"] == "orin" and s["model"] == "llama")
    assert set(listed(site, "--profile", "orin", "--model", "llama")) == both
    assert set(listed(site, "--out-of-sync")) == ids(lambda s: s["drifted"] and s["reported"])
    assert set(listed(site, "--errors")) == ids(
        lambda s: s["state"] == "failed" or (s["transfer_failed"] and s["reported"])
    )
    assert listed(site, "--search", "SCALE-011") == [f"scale-011{d}" for d in range(10)]
    r = status(site, "--limit", "1001")
    assert r.returncode == 2 and "--limit: Input should be less than or equal to 1000" in r.stderr, r.stderr


def test_one_page_says_where_the_next_starts_and_the_summary_counts_the_site(site: Mosquitto) -> None:
    r = status(site, "--limit", "10")
    assert r.returncode == 0, r.stderr
    page = json.loads(r.stdout)
    assert [n["node_id"] for n in page["nodes"]] == [f"scale-{i:04d}" for i in range(10)]
    assert page["total"] == NODES and page["next_offset"] == 10
    summary = page["summary"]
    assert summary["total"] == NODES
    assert summary["by_state"] == {
        state: len(ids(lambda s, state=state: s["state"] == state)) for state in ("online", "offline", "failed")
    }
    assert summary["out_of_sync"] == len(ids(lambda s: s["drifted"] and s["reported"]))
    assert summary["failed"] == len(ids(lambda s: s["state"] == "failed"))
    assert summary["by_sync"]["unknown"] == len(ids(lambda s: not s["reported"]))
    last = json.loads(status(site, "--limit", "10", "--offset", str(NODES - 5)).stdout)
    assert len(last["nodes"]) == 5 and last["next_offset"] is None


def test_the_table_starts_with_the_summary_line(site: Mosquitto) -> None:
    r = fleet(site, "--timeout", "30", "fleet", "status", "--state", "failed")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    online, offline = len(ids(lambda s: s["state"] == "online")), len(ids(lambda s: s["state"] == "offline"))
    assert lines[0].startswith(f"{NODES} nodes: {online} online, {offline} offline, 12 failed;"), lines[0]
    assert lines[1] == "12 match state failed" and lines[2].split()[:2] == ["NODE", "GROUPS"]
    assert [line.split()[0] for line in lines[3:]] == sorted(ids(lambda s: s["state"] == "failed"))
    r = fleet(site, "--timeout", "30", "fleet", "status", "--limit", "3", "--offset", "6")
    assert r.returncode == 0 and "nodes 7-9 of 1200; next page: --offset 9" in r.stdout, r.stdout[:500]


def test_adapters_of_1200_nodes_come_in_pages_too(site: Mosquitto) -> None:
    r = fleet(site, "--timeout", "30", "fleet", "adapters", "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["nodes"]) == ids(lambda s: True)
    r = fleet(site, "--timeout", "30", "fleet", "adapters", "--json", "--group", "line-2", "--limit", "5")
    page = json.loads(r.stdout)
    assert len(page["nodes"]) == 5 and page["total"] == NODES // 4 and page["next_offset"] == 5
    r = fleet(site, "--timeout", "30", "fleet", "rules", "--limit", "5")
    assert r.returncode == 0 and r.stdout == "(no rules)\n", r.stdout + r.stderr


def test_identities_filter_and_page_locally(tmp_path: Path) -> None:
    def cli(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = identity_commands.main(["--site", "lab", args[0], "--dir", str(tmp_path / "pki"), *args[1:]], out, err)
        return rc, out.getvalue(), err.getvalue()

    assert cli("init-pki", "--broker-host", "broker.lab")[0] == 0
    pki = SitePki(tmp_path / "pki")
    for i in range(5):
        pki.issue(f"n{i}", "node", ["line" if i % 2 else "yard"])
    pki.issue("s1", "sensor", [])
    pki.revoke("n3")
    rc, out, err = cli("identities", "--json", "--kind", "node", "--group", "line")
    assert rc == 0 and [i["name"] for i in json.loads(out)] == ["n1", "n3"], err
    rc, out, _ = cli("identities", "--json", "--kind", "node", "--state", "active", "--limit", "2", "--offset", "1")
    page = json.loads(out)
    assert [i["name"] for i in page["identities"]] == ["n1", "n2"] and page["total"] == 4 and page["next_offset"] == 3
    rc, out, _ = cli("identities", "--kind", "node", "--limit", "2")
    assert (
        out.splitlines()[0].split()[:2] == ["n0", "node"]
        and out.splitlines()[-1] == "5 identities; next page: --offset 2"
    )
