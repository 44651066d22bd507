"""Issue 22: any node could fetch any group's artifacts. Now an artifact is published under the
target it was pushed to (`artifact/group/<g>/…`, `artifact/node/<n>/…`) and a node reads only its
own scope and its groups'.

A real Mosquitto with the generated mutual-TLS configuration and ACL, a real orchestrator, real
nodes `na` (group line-a) and `nb` (group line-b) with their enrollment bundles, and the operator
`alice` pushing through the CLI. A client holding na's certificate subscribes to line-b's scope:
the broker delivers nothing of it, while line-a's manifest, chunks and a marker sent after
everything else do arrive. The orchestrator refuses to send chunks for a scope the asking node is
not in, a node can ask for chunks only in its own name (on its own request topic, which only it
may write), and a node assigned to a group at run time follows it and fetches that group's adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from edgefleet.fleet.identity_commands import read_env
from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.artifacts import build_manifest
from edgefleet.proto.payloads import ChunkRequest
from edgefleet.proto.topics import Topics
from tests.conftest import BIN, NodeProcess, wait_for
from tests.mqtt_support import Orchestrator
from tests.security.tls_support import Client, TlsBroker, pki_cli
from tools.make_lora import write_lora

T = Topics.for_site("lab")
A, B = T.artifact_scope("group", "line-a"), T.artifact_scope("group", "line-b")
NB_OWN = T.artifact_scope("node", "nb")
A_MARKER = f"{T.root}artifact/{A}/marker"  # under line-a's scope; no node subscribes to it
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("artifact-scope")
    base = resolve_model(None, tmp_path_factory.mktemp("models")).path
    broker = TlsBroker(tmp)
    started: list[Any] = []
    try:
        bundles = {n: broker.enroll("node", n, "--groups", g) for n, g in (("na", "line-a"), ("nb", "line-b"))}
        bundles["alice"] = broker.enroll("operator", "alice")
        broker.settle()
        watch = Client(broker, broker.pki.bundle_dir("orchestrator"), "watcher")  # sees the whole root
        started.append(watch)
        assert watch.connected
        watch.subscribe(f"{T.root}#")
        orch_env = {
            **read_env(broker.pki.bundle_dir("orchestrator") / "edgefleet.env"),
            "EDGEFLEET_ARTIFACT_CHUNK_BYTES": str(CHUNK),
        }
        started.append(Orchestrator(tmp, broker, env=orch_env))  # type: ignore[arg-type]
        nodes = {}
        for n in ("na", "nb"):
            env = {**read_env(bundles[n] / "edgefleet.env"), "EDGEFLEET_ARTIFACT_RETRY_S": "2"}
            nodes[n] = NodeProcess(tmp, node_id=n, env=env)
            started.append(nodes[n])
        for node in nodes.values():
            node.wait_serving()
        loras = {
            name: write_lora(base, tmp / f"{name}.gguf", rank=16, seed=seed)
            for name, seed in (("fix-a", 1), ("fix-b", 2))
        }
        yield {"broker": broker, "watch": watch, "bundles": bundles, "nodes": nodes, "loras": loras}
    finally:
        for part in reversed(started):
            if isinstance(part, Client):
                part.close()
            else:
                part.stop()
        broker.stop()


def operator(site: dict[str, Any], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI as operator alice, with her enrollment bundle (her certificate signs the commands)."""
    env = {**os.environ, **read_env(site["bundles"]["alice"] / "edgefleet.env")}
    r = subprocess.run([str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def loaded(watch: Client, node: str) -> dict[str, str]:
    """The adapters `node` last reported loaded (its retained reported state)."""
    with watch._lock:
        found = [p for t, p in watch.messages if t == T.node_reported(node) and p]
    return json.loads(found[-1]).get("adapters", {}) if found else {}


def push(site: dict[str, Any], name: str, target: str) -> None:
    operator(site, "fleet", "push-adapter", str(site["loras"][name]), "--name", name, "--version", "1",
             "--target", target, "--wait", "150")  # fmt: skip


def under(client: Client, scope: str) -> list[str]:
    with client._lock:
        return [t for t, _ in client.messages if t.startswith(f"{T.root}artifact/{scope}/")]


@pytest.fixture(scope="module")
def pushed(site: dict[str, Any]) -> dict[str, Any]:
    """A spy holding na's certificate subscribes to both groups' scopes and nb's own, then the
    operator pushes fix-a to line-a and fix-b to line-b and both nodes load theirs."""
    spy = Client(site["broker"], site["bundles"]["na"], "na-spy")
    assert spy.connected
    for scope in (B, NB_OWN, A):
        spy.subscribe(T.artifacts_for(scope))  # the broker refuses or silently narrows what it delivers
    push(site, "fix-a", "group:line-a")
    push(site, "fix-b", "group:line-b")
    watch = site["watch"]
    assert wait_for(lambda: loaded(watch, "na").get("fix-a") == "1" and loaded(watch, "nb").get("fix-b") == "1", 30)
    return {**site, "spy": spy}


def test_a_node_of_group_a_never_receives_group_b_s_manifest_or_chunks(pushed: dict[str, Any]) -> None:
    spy, watch = pushed["spy"], pushed["watch"]
    try:
        # fix-b was published under line-b's scope (the orchestrator's identity sees it) ...
        assert watch.got(T.artifact_manifest(B, "adapter", "fix-b"))
        assert any(T.chunk_of(t) and T.chunk_of(t).name == "fix-b" for t in under(watch, B))  # type: ignore[union-attr]
        assert not any("fix-b" in t for t in under(watch, A)) and not any("fix-a" in t for t in under(watch, B))
        # ... and nothing of it reached na's certificate, while line-a's manifest, chunks and a later marker did
        spy.receive_marker(watch, A_MARKER)
        assert spy.got(T.artifact_manifest(A, "adapter", "fix-a"))
        assert any(T.chunk_of(t) for t in under(spy, A))
        assert under(spy, B) == [] and under(spy, NB_OWN) == []
        assert "fix-b" not in loaded(watch, "na") and "fix-a" not in loaded(watch, "nb")
    finally:
        spy.close()


def test_the_orchestrator_sends_chunks_only_for_a_scope_the_asking_node_is_in(pushed: dict[str, Any]) -> None:
    watch = pushed["watch"]
    spy = Client(pushed["broker"], pushed["bundles"]["na"], "na-asks")
    try:
        assert spy.connected
        m = build_manifest(pushed["loras"]["fix-b"], "adapter", "fix-b", "1", chunk_bytes=CHUNK)
        ask = {"kind": "adapter", "name": "fix-b", "version": "1", "sha256": m.sha256, "chunks": [0]}
        req = lambda node_id, scope: ChunkRequest(node_id=node_id, scope=scope, **ask).dumps()  # noqa: E731
        own = T.artifact_chunk_requests("na")
        assert not spy.publish(own, req("na", B)).is_failure  # na asks for line-b's scope: refused, nothing sent
        assert not spy.publish(own, req("na", A)).is_failure  # line-b's adapter on its own group's scope: refused
        assert wait_for(lambda: {"permission_denied", "unknown_artifact"} <= {c for c, _ in refusals(watch)}, 10)
        assert any("node 'na' may not fetch adapter fix-b@1 on group/line-b" in r for _, r in refusals(watch))
    finally:
        spy.close()


def refusals(watch: Client) -> list[tuple[str, str]]:
    """(code, message) of every error report the orchestrator published."""
    with watch._lock:
        found = [json.loads(p) for t, p in watch.messages if t == T.errors("orchestrator")]
    return [(r["code"], r["message"]) for r in found]


def test_a_node_cannot_ask_for_chunks_in_another_node_s_name(pushed: dict[str, Any]) -> None:
    """Issue 22: on the one shared request topic na could name nb in the payload, and the
    orchestrator then sent line-b's chunks. Now the broker lets na write only its own request
    topic, and the orchestrator refuses a request whose node differs from the topic's."""
    watch = pushed["watch"]
    spy = Client(pushed["broker"], pushed["bundles"]["na"], "na-lies")
    try:
        assert spy.connected
        m = build_manifest(pushed["loras"]["fix-b"], "adapter", "fix-b", "1", chunk_bytes=CHUNK)
        lie = ChunkRequest(node_id="nb", scope=B, kind="adapter", name="fix-b", version="1", sha256=m.sha256,
                           chunks=[0]).dumps()  # fmt: skip
        sent_before = [t for t in under(watch, B) if "fix-b" in t]
        # on nb's topic: the broker refuses it, and nobody (the orchestrator included) receives it
        nb_topic = T.artifact_chunk_requests("nb")
        assert str(spy.publish(nb_topic, lie)) == "Not authorized"
        watch.receive_marker(watch, A_MARKER)
        assert not watch.got(nb_topic, lie)
        # on its own topic, naming nb: the orchestrator refuses it (the asker is the topic's node)
        own = T.artifact_chunk_requests("na")
        assert not spy.publish(own, lie).is_failure
        denied = lambda: [r for c, r in refusals(watch) if c == "permission_denied" and f"on {own}:" in r]  # noqa: E731
        assert wait_for(denied, timeout=10), refusals(watch)
        assert denied()[0].startswith(f"node 'na' may not ask for chunks on {own}: the request names node 'nb'")
        # refused before anything was queued: no chunk of fix-b went out on line-b's scope
        watch.receive_marker(watch, A_MARKER)
        assert [t for t in under(watch, B) if "fix-b" in t] == sent_before
    finally:
        spy.close()


def test_a_node_assigned_to_a_group_at_run_time_fetches_that_group_s_adapter(pushed: dict[str, Any]) -> None:
    broker, watch = pushed["broker"], pushed["watch"]
    assert "fix-b" not in loaded(watch, "na")
    broker.pki.assign_groups("na", ["line-b"])  # the ACL first (what `assign-groups --dir` does) ...
    pki_cli(broker.pki.dir, "broker-config", "--broker-pid", str(broker.proc.pid))
    broker.settle()
    operator(pushed, "fleet", "assign-groups", "na", "--groups", "line-b", "--dir", str(broker.pki.dir), "--wait", "30")
    assert wait_for(lambda: loaded(watch, "na").get("fix-b") == "1", timeout=90), pushed["nodes"]["na"].log()[-3000:]
    assert loaded(watch, "na").get("fix-a") == "1"
