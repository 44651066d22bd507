"""Base-model deployments end to end, both sides real (issue 25): the operator's CLI, the orchestrator's
push-model / rm-model and rollout driver, the nodes' budget check, download, drain, switch and check.

One site for the module (tests/orchestrator/model_deploy_support.py): a TLS Mosquitto, an orchestrator
with its front door, two nodes of group `edge` on the default model. The tests run in order, each
starting from where the one before left the site:
1. `fleet model push` of the bundled gemma-3-270m to node md-a while a client streams through the
   front door: no request fails, md-a reports it everywhere and the front door lists it.
2. `fleet model rm`: md-a goes back to its own model, with no download.
3. a model release to the group, md-a the canary, gated by a raw-prompt evaluation case (a template:
   a base model without a chat template is sent the rendered text as is): the canary switches back to
   gemma from the file it kept (no download), passes its gates, then md-b fetches and switches.
4. the same file pushed under a new version: md-a switches to that name from its own file (it used
   to keep reporting the old name, so the orchestrator saw it drifted for ever).

Most of the module's time is the CLI's upload of the 253 MB file (one signed 128 KiB piece at a
time, ~5 MB/s here); the nodes get 1 MiB chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.commands import Command
from tests import site_identity
from tests.conftest import wait_for
from tests.mqtt_support import fleet_status
from tests.orchestrator.command_client import CommandClient
from tests.orchestrator.model_deploy_support import GROUP, OWN, DeploySite, Streamer, T

pytestmark = pytest.mark.in_file_order  # one site, each test starts where the one before left it

A, B = "md-a", "md-b"
GEMMA = "gemma-3-270m"
LABEL = f"{GEMMA}@1.0"
SWITCH_S = 240  # the CLI's wait: upload + transfer of 253 MB + drain + restart + load + check, on a busy runner


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploySite]:
    # 1 MiB chunks to the nodes (the default is 256 KiB): a quarter of the messages, the same protocol
    s = DeploySite(tmp_path_factory.mktemp("model-deploy"), (A, B), EDGEFLEET_ARTIFACT_CHUNK_BYTES=str(1024 * 1024))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model(GEMMA, tmp_path_factory.mktemp("models")).path  # joined from its package once


def test_a_pushed_model_switches_its_node_while_a_client_streams_and_every_view_follows(
    site: DeploySite, gemma: Path
) -> None:
    push = ("fleet", "model", "push", str(gemma), "--name", GEMMA, "--version", "1.0", "--target", f"node:{A}")
    # the upload first, before the client streams: its 1932 signed pieces crawl on two busy cores
    started = time.monotonic()
    up = site.cli(*push, "--upload-only", timeout=SWITCH_S)
    uploaded_s = time.monotonic() - started
    assert up.returncode == 0 and "signed and kept; no target changed" in up.stdout, up.stdout + up.stderr
    stream = Streamer(site.http, clients=1).start()
    try:
        assert wait_for(lambda: len(stream.served) >= 2, timeout=60), stream.failures
        since = time.monotonic()
        r = site.cli(*push, "--wait", str(SWITCH_S), timeout=SWITCH_S + 60)  # held: its upload ends at once
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{site.log(A)}"
        before = len(stream.served)
        assert wait_for(lambda: len(stream.served) >= before + 2, timeout=60), stream.failures
    finally:
        stream.stop()
    assert f"model {LABEL}" in r.stdout and f"pushed to node:{A}" in r.stdout, r.stdout
    assert f"{A:<20} serving" in r.stderr, r.stderr
    assert stream.failures == [], stream.failures  # no accepted request failed, the switch included
    installed = site.when(
        A, lambda rep: rep.get("transfers", {}).get(f"model/{GEMMA}", {}).get("state") == "installed", since
    )
    switched = site.when(A, lambda rep: rep.get("model") == LABEL, since)
    assert installed is not None and switched is not None
    print(
        f"\n{LABEL} to {A}: upload {uploaded_s:.1f} s, transfer {installed - since:.1f} s, "
        f"switch {switched - installed:.1f} s, {len(stream.served)} answers streamed, {len(stream.failures)} failed"
    )
    assert B in stream.served
    # the node reports it (ReportedState.model, NodeStatus info.model, GetNodeInfo) ...
    assert site.reported_model(A) == LABEL
    assert wait_for(lambda: site.status_model(A) == LABEL, timeout=20), site.status_model(A)
    assert site.nodes[A].info().model.name == LABEL
    # ... the front door routes it (and still the own model to the other node) ...
    assert wait_for(lambda: site.serving().get(LABEL) == [A], timeout=30), site.serving()
    assert site.serving()[OWN] == [B]
    client = site_identity.site().openai(site.http + "/v1", timeout=60)
    answer = client.completions.create(model=LABEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert answer.choices[0].text.strip(), answer  # a base model, asked with a raw prompt
    # ... and `fleet status` shows it
    shown = fleet_status(site.broker)
    assert shown[A]["reported_model"] == LABEL and shown[B]["reported_model"] == OWN, shown
    table = site.cli("fleet", "status", timeout=30)
    assert table.returncode == 0 and LABEL in table.stdout, table.stdout


def test_rm_model_returns_the_node_to_its_own_model_without_a_download(site: DeploySite) -> None:
    assert site.reported_model(A) == LABEL, "the test before leaves md-a on gemma"
    since = time.monotonic()
    r = site.cli("fleet", "model", "rm", "--target", f"node:{A}", timeout=60)
    assert r.returncode == 0 and "back to their own model" in r.stdout, r.stdout + r.stderr
    assert wait_for(lambda: site.reported_model(A) == OWN, timeout=120), site.log(A)
    assert site.nodes[A].info().model.name == OWN
    assert wait_for(lambda: sorted(site.serving().get(OWN, [])) == [A, B], timeout=30), site.serving()
    assert LABEL not in site.serving()
    assert site.chunk_requests(OWN, since) == [] and site.chunk_requests(GEMMA, since) == []
    # gemma stays on disk, one model back: a return to it needs no download (the next test)
    assert list((site.nodes[A].data_dir / "models").glob(f"{LABEL}-*.gguf"))


def call(site: DeploySite, **fields: Any) -> Any:
    client = CommandClient(site.broker)
    try:
        return client.call(Command(**fields).dumps(), timeout=30)
    finally:
        client.close()


def test_a_model_release_moves_the_canary_first_gated_then_the_group(
    site: DeploySite, gemma: Path, tmp_path: Path
) -> None:
    tpl = {"name": "days", "version": "1", "template": "Monday, Tuesday, {{ day }},", "variables": ["day"]}
    r = call(site, op="push-template", target=f"group:{GROUP}", template=tpl)
    assert r.ok, r.message
    # gemma (a base model: the rendered text goes to it as a raw prompt) goes on " Thursday, Friday, ..."
    case = {"id": "next-day", "template": "days", "variables": {"day": "Wednesday"}, "max_tokens": 8}
    evaluation = tmp_path / "days.json"
    evaluation.write_text(json.dumps({"name": "days", "cases": [{**case, "contains": ["thursday"]}]}))
    since = time.monotonic()
    r = site.cli(
        "fleet", "rollout", "start", "gemma-edge", "--target", f"group:{GROUP}",
        "--model", LABEL, "--file", str(gemma), "--canary", A, "--steps", "100", "--soak", "1s",
        "--apply-timeout", "4m", "--eval", str(evaluation), "--max-p95-ratio", "100", "--min-tps-ratio", "0.01",
        "--wait", str(SWITCH_S + 120), timeout=SWITCH_S + 180,
    )  # fmt: skip
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{site.log()}"
    shown = site.cli("fleet", "rollout", "status", "gemma-edge", "--json", timeout=30)
    status = json.loads(shown.stdout)["rollout"]
    assert status["state"] == "succeeded", status.get("events")
    canary, rest = status["waves"]
    assert (canary["nodes"], rest["nodes"]) == ([A], [B])
    for w in (canary, rest):
        assert w["state"] == "passed" and [v["gate"] for v in w["verdicts"]] == ["health", "service", "quality"]
    for w in (canary, rest):  # the quality gate judged the new model's answers: they pass the check
        assert w["verdicts"][2]["figures"]["score_after"] == 1.0, w["verdicts"]
    # each node switched, reported the model, and the front door routes it to both
    assert site.reported_model(A) == LABEL and site.reported_model(B) == LABEL
    assert wait_for(lambda: sorted(site.serving().get(LABEL, [])) == [A, B], timeout=30), site.serving()
    # the canary switched back from the file it kept; the other node fetched it, after the canary passed
    assert [m for _, m in site.chunk_requests(GEMMA, since) if m.get("node_id") == A] == []
    asked = [t for t, m in site.chunk_requests(GEMMA, since) if m.get("node_id") == B]
    canary_on = site.when(A, lambda rep: rep.get("model") == LABEL, since)
    assert asked and canary_on is not None and asked[0] > canary_on
    # completed: the group names the model, and its manifest is under the group's scope for nodes to come
    assert site.recorder is not None
    group_manifest = site.recorder.on(T.artifact_manifest(T.artifact_scope("group", GROUP), "model", GEMMA), since)
    assert group_manifest and group_manifest[-1][1]["version"] == "1.0", "no manifest under the group's scope"


def test_the_same_file_pushed_under_a_new_version_is_served_under_it_without_a_download(
    site: DeploySite, gemma: Path
) -> None:
    """A node holding the very bytes of the desired model (the same sha256) under another name or
    version switches to the new name from its own file: it reports what is desired, or the
    orchestrator would see it drifted (and a release wait for it) for ever."""
    since = time.monotonic()
    r = site.cli(
        "fleet", "model", "push", str(gemma), "--name", GEMMA, "--version", "1.1", "--target", f"node:{A}",
        "--wait", "90", timeout=150,
    )  # fmt: skip
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{site.log(A)}"
    assert f"{A:<20} serving" in r.stderr, r.stderr
    assert site.reported_model(A) == f"{GEMMA}@1.1" and site.nodes[A].info().model.name == f"{GEMMA}@1.1"
    assert wait_for(lambda: site.serving().get(f"{GEMMA}@1.1") == [A], timeout=30), site.serving()
    assert site.chunk_requests(GEMMA, since) == []  # from the file it holds
    assert fleet_status(site.broker)[A]["drift"] == [], fleet_status(site.broker)[A]
