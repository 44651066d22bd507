"""Adapters to the fleet end to end: upload, signed manifest, chunks over a real Mosquitto, hot-swap on nodes.

One broker, one orchestrator and three node processes for the module: `a` and `b` in group
`line`, `c` outside it (the resume tests use `c` alone).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.artifacts import SiteKey, build_manifest
from edgefleet.proto.payloads import ChunkRequest
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet, init_site_keys, node_env
from tools.make_lora import write_lora

PROMPT = "Is 7 mm/s vibration bad?"
CHUNK = 64 * 1024
TOPICS = Topics.for_site("lab")
NODE_A, NODE_C = TOPICS.artifact_scope("node", "a"), TOPICS.artifact_scope("node", "c")  # pushes to node:a, node:c


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_site_keys(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model(None, tmp_path_factory.mktemp("models")).path


@pytest.fixture(scope="module")
def loras(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loras")
    return {
        "v1": write_lora(base_model, d / "fix-1.gguf", rank=16, seed=1),
        "v2": write_lora(base_model, d / "fix-2.gguf", rank=16, seed=2),
        "gemma": write_lora(base_model, d / "other-arch.gguf", rank=16, seed=3, architecture="gemma3"),
    }


@pytest.fixture(scope="module")
def orchestrator(broker: Mosquitto, site: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    env = {
        "EDGEFLEET_SITE_KEY": str(site["key"]),
        "EDGEFLEET_ARTIFACT_CHUNK_BYTES": str(CHUNK),
        "EDGEFLEET_ARTIFACT_CHUNK_INTERVAL_MS": "100",  # slow enough to cut a transfer in the middle
    }
    o = Orchestrator(tmp_path_factory.mktemp("orchestrator"), broker, env=env)
    yield
    o.stop()


@pytest.fixture(scope="module")
def nodes(
    broker: Mosquitto, orchestrator: None, site: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("nodes")
    started = {}
    for node_id, groups in (("a", "line"), ("b", "line"), ("c", "spare")):
        env = node_env(
            broker,
            EDGEFLEET_GROUPS=groups,
            EDGEFLEET_SITE_PUBLIC_KEY=str(site["pub"]),
            EDGEFLEET_ARTIFACT_WINDOW="8",
            EDGEFLEET_ARTIFACT_RETRY_S="2",
        )
        started[node_id] = NodeProcess(tmp, node_id=node_id, env=env)
    for n in started.values():
        n.wait_serving()
    assert wait_for(lambda: set(adapters_view(broker)["nodes"]) >= {"a", "b", "c"}, timeout=20)
    yield started
    for n in started.values():
        n.stop()


def adapters_view(broker: Mosquitto) -> dict[str, Any]:
    r = fleet(broker, "--timeout", "5", "fleet", "adapters", "--json")
    return json.loads(r.stdout) if r.returncode == 0 else {"nodes": {}, "manifests": []}


def loaded(node: NodeProcess) -> dict[str, str]:
    return {a.name: a.version for a in node.info().adapters}


def ask(node: NodeProcess, adapter: str = "") -> str:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=PROMPT)], max_tokens=16, temperature=0, adapter=adapter
    )
    return collect(node.stub.Generate(req, timeout=60))[0]


def push(broker: Mosquitto, path: Path, name: str, version: str, target: str, *extra: str) -> Any:
    return fleet(
        broker,
        "fleet",
        "push-adapter",
        str(path),
        "--name",
        name,
        "--version",
        version,
        "--target",
        target,
        *extra,
        timeout=180,
    )


def test_pushed_adapter_reaches_the_group_only_and_removal_restores_base(
    broker: Mosquitto, nodes: dict[str, NodeProcess], loras: dict[str, Path]
) -> None:
    assert loras["v1"].stat().st_size >= 1_500_000
    base = {k: ask(n) for k, n in nodes.items()}
    before = {k: loaded(n) for k, n in nodes.items()}  # what the module's other tests left loaded
    r = push(broker, loras["v1"], "fix", "1", "line", "--wait", "120")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a" in r.stderr and "b" in r.stderr and "loaded" in r.stderr  # the per-node progress lines
    for k in ("a", "b"):
        assert loaded(nodes[k]) == {**before[k], "fix": "1"}
        tuned = ask(nodes[k], "fix")
        assert tuned != base[k]
        assert ask(nodes[k]) == base[k]  # base requests are untouched while the adapter is loaded
    assert loaded(nodes["c"]) == before["c"]
    view = adapters_view(broker)
    assert view["nodes"]["a"]["loaded"] == {**before["a"], "fix": "1"} and view["nodes"]["c"]["loaded"] == before["c"]

    # four concurrent requests, two with the adapter and two without, each return what they return alone
    solo = {"fix": ask(nodes["a"], "fix"), "": base["a"]}
    results: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, ask(nodes["a"], "fix" if i % 2 else "")))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == [solo[""], solo["fix"], solo[""], solo["fix"]]

    r = fleet(broker, "fleet", "rm-adapter", "fix", "--target", "line")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: loaded(nodes["a"]) == before["a"] and loaded(nodes["b"]) == before["b"], timeout=20)
    assert ask(nodes["a"]) == base["a"] and ask(nodes["b"]) == base["b"]


def errors_of(watcher: Watcher, code: str) -> list[dict[str, Any]]:
    return [e for e in watcher.json() if e.get("code") == code]


def test_bad_artifacts_are_refused_and_the_node_keeps_its_adapter(
    broker: Mosquitto, nodes: dict[str, NodeProcess], loras: dict[str, Path], site: dict[str, Path], tmp_path: Path
) -> None:
    a = nodes["a"]
    errors = Watcher(broker, TOPICS.all_errors())
    try:
        r = push(broker, loras["v1"], "guard", "1", "node:a", "--wait", "120")
        assert r.returncode == 0, r.stderr
        good = ask(a, "guard")

        # a tampered chunk, published by someone else while version 2 is on its way
        r = push(broker, loras["v2"], "guard", "2", "node:a", "--no-wait")
        assert r.returncode == 0, r.stderr
        manifest = build_manifest(loras["v2"], "adapter", "guard", "2", chunk_bytes=CHUNK)
        last = manifest.chunk_count - 1
        forged = bytes(CHUNK if last else manifest.size)[: manifest.size - CHUNK * last]
        errors.publish(TOPICS.artifact_chunk(NODE_A, "adapter", "guard", "2", last), forged)
        assert wait_for(lambda: errors_of(errors, "chunk_refused"), timeout=10), errors.json()
        assert wait_for(lambda: loaded(a).get("guard") == "2", timeout=60)  # the real chunk still lands
        v2 = ask(a, "guard")
        assert v2 != good

        # a manifest signed by another key
        other = SiteKey.generate().sign(build_manifest(loras["v1"], "adapter", "guard", "9", chunk_bytes=CHUNK))
        errors.publish(TOPICS.artifact_manifest(NODE_A, "adapter", "guard"), other.model_dump_json().encode())
        assert wait_for(lambda: errors_of(errors, "bad_signature"), timeout=10)
        # an older version, properly signed (a replay)
        old = SiteKey.load(site["key"]).sign(build_manifest(loras["v1"], "adapter", "guard", "0.5", chunk_bytes=CHUNK))
        errors.publish(TOPICS.artifact_manifest(NODE_A, "adapter", "guard"), old.model_dump_json().encode())
        assert wait_for(lambda: errors_of(errors, "older_version"), timeout=10)

        # an adapter for another architecture: the orchestrator signs it, the node refuses it
        r = push(broker, loras["gemma"], "guard", "3", "node:a", "--wait", "60")
        assert r.returncode == 1 and "refused" in r.stderr and "gemma3" in r.stderr, r.stderr
        assert wait_for(lambda: errors_of(errors, "adapter_refused"), timeout=10)

        # an older version pushed after a newer one, and a name with a path in it: the CLI gets the reason
        r = push(broker, loras["v1"], "guard", "1.5", "node:a", "--no-wait")
        assert r.returncode == 2 and "older than 3" in r.stderr, r.stderr
        r = push(broker, loras["v1"], "../guard", "4", "node:a", "--no-wait")
        assert r.returncode == 2 and "invalid" in r.stderr, r.stderr

        # a chunk request out of range goes to the orchestrator's errors topic
        req = ChunkRequest(
            node_id="a",
            scope=NODE_A,
            kind="adapter",
            name="guard",
            version="3",
            sha256=sha(loras["gemma"]),
            chunks=[9999],
        )
        errors.publish(TOPICS.artifact_chunk_requests("a"), req.dumps())
        assert wait_for(lambda: errors_of(errors, "chunk_out_of_range"), timeout=10)

        # through all of it the node kept version 2 and kept serving
        assert loaded(a).get("guard") == "2"
        assert ask(a, "guard") == v2
    finally:
        errors.close()
        fleet(broker, "fleet", "rm-adapter", "guard", "--target", "node:a")
        assert wait_for(lambda: "guard" not in loaded(a), timeout=20)  # the module's other tests count adapters


def test_a_version_with_a_plus_is_delivered_and_a_later_push_still_is(
    broker: Mosquitto, nodes: dict[str, NodeProcess], loras: dict[str, Path]
) -> None:
    """Issue 22: `+` (allowed in versions) went raw into chunk topics, where it is a wildcard; the
    orchestrator's chunk sender died on it and no later transfer was ever applied."""
    b = nodes["b"]
    try:
        r = push(broker, loras["v1"], "cuda", "1.0+cu121", "node:b", "--wait", "120")
        assert r.returncode == 0, r.stdout + r.stderr
        assert loaded(b).get("cuda") == "1.0+cu121"
        r = push(broker, loras["v2"], "cuda", "2", "node:b", "--wait", "120")
        assert r.returncode == 0, r.stdout + r.stderr
        assert loaded(b).get("cuda") == "2"
    finally:
        fleet(broker, "fleet", "rm-adapter", "cuda", "--target", "node:b")
        assert wait_for(lambda: "cuda" not in loaded(b), timeout=20)  # the module's other tests count adapters


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunks_sent(broker: Mosquitto, name: str) -> tuple[int, int]:
    m = next(m for m in adapters_view(broker)["manifests"] if m["name"] == name)
    return m["chunks_sent"], m["chunks"]


def test_node_killed_mid_transfer_resumes_from_the_chunks_it_holds(
    broker: Mosquitto, nodes: dict[str, NodeProcess], loras: dict[str, Path]
) -> None:
    c = nodes["c"]
    seen = Watcher(broker, TOPICS.artifact_chunk(NODE_C, "adapter", "resume", "1", 0).rsplit("/", 1)[0] + "/+")
    r = push(broker, loras["v2"], "resume", "1", "node:c", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: len(seen.messages) >= 8, timeout=30)
    seen.close()
    c.kill()
    asks = Watcher(broker, TOPICS.artifact_chunk_requests(c.node_id))  # from here on only the restarted node asks
    restarted = c.restarted()
    nodes["c"] = restarted
    try:
        restarted.wait_serving()
        assert wait_for(lambda: loaded(restarted).get("resume") == "1", timeout=60)
        requests = [r for r in asks.json() if r.get("node_id") == c.node_id and r.get("name") == "resume"]
    finally:
        asks.close()
    asked = {i for r in requests for i in r["chunks"]}  # the chunks it did not hold when it came back
    total = chunks_sent(broker, "resume")[1]
    assert 0 < len(asked) < total, (sorted(asked), total)
    transfer = adapters_view(broker)["nodes"]["c"]["transfers"]["adapter/resume"]
    assert transfer["resumed_from"] > 0 and transfer["state"] == "installed"
    assert ask(restarted, "resume") != ask(restarted)


def test_broker_restarted_mid_transfer_resumes_and_completes(
    broker: Mosquitto, nodes: dict[str, NodeProcess], loras: dict[str, Path]
) -> None:
    c = nodes["c"]
    seen = Watcher(broker, TOPICS.artifact_chunk(NODE_C, "adapter", "steady", "1", 0).rsplit("/", 1)[0] + "/+")
    r = push(broker, loras["v1"], "steady", "1", "node:c", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: len(seen.messages) >= 8, timeout=30)
    seen.close()
    before, total = chunks_sent(broker, "steady")  # taken before the cut: `after` counts every later send
    broker.restart()
    assert wait_for(lambda: loaded(c).get("steady") == "1", timeout=90)
    after = chunks_sent(broker, "steady")[0] - before
    assert 0 < after < total, (before, after, total)
    assert ask(c, "steady") != ask(c)


CORPUS = Path(__file__).resolve().parents[2] / "bench" / "rag_corpus"


def collections(node: NodeProcess) -> dict[str, pb.CollectionInfo]:
    return {c.name: c for c in node.stub.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections}


def test_pushed_knowledge_reaches_the_group_and_a_new_version_replaces_it(
    broker: Mosquitto, nodes: dict[str, NodeProcess], tmp_path: Path
) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for d, names in ((v1, ["kr9-specifications", "kr9-safety"]), (v2, ["kr9-specifications", "maint-strainer"])):
        (d / "sub").mkdir(parents=True)
        for n in names:
            (d / "sub" / f"{n}.md").write_text((CORPUS / f"{n}.md").read_text())
    r = fleet(broker, "fleet", "push-knowledge", str(v1), "--collection", "plant", "--version", "1", "--target", "line")
    assert r.returncode == 0, r.stdout + r.stderr
    for k in ("a", "b"):
        c = collections(nodes[k])["plant"]
        assert (c.version, c.documents) == ("1", 2)
    assert "plant" not in collections(nodes["c"])
    hits = nodes["a"].stub.Retrieve(pb.RetrieveRequest(query="safety", collection="plant", top_k=5), timeout=10)
    assert {h.doc_id for h in hits.chunks} <= {"sub/kr9-specifications.md", "sub/kr9-safety.md"}
    assert hits.chunks[0].metadata["source"].startswith("sub/")

    r = fleet(broker, "fleet", "push-knowledge", str(v2), "--collection", "plant", "--version", "2", "--target", "line")
    assert r.returncode == 0, r.stdout + r.stderr
    for k in ("a", "b"):
        c = collections(nodes[k])["plant"]
        assert (c.version, c.documents) == ("2", 2)
        docs = {
            h.doc_id
            for h in nodes[k]
            .stub.Retrieve(pb.RetrieveRequest(query="strainer safety", collection="plant", top_k=10), timeout=10)
            .chunks
        }
        assert "sub/maint-strainer.md" in docs and "sub/kr9-safety.md" not in docs
    r = fleet(broker, "fleet", "push-knowledge", str(v1), "--collection", "plant", "--version", "1", "--target", "line")
    assert r.returncode == 2 and "older" in r.stderr
    r = fleet(broker, "fleet", "rm-knowledge", "plant", "--target", "line")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: "plant" not in collections(nodes["a"]), timeout=20)
