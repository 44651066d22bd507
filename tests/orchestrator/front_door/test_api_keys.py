"""API keys on the front door end to end: a second orchestrator with EDGEFLEET_FRONT_DOOR_AUTH=keys
on the site's broker and nodes; the official `openai` client for HTTP, grpc for gRPC."""

from __future__ import annotations

import argparse
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.fleet import keys_commands
from edgefleet.plumbing.api_keys import KeyStore
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Orchestrator
from tests.orchestrator.front_door.conftest import FRONT_DOOR_ENV, Site


@dataclass
class Keyed:
    orchestrator: Orchestrator
    db: Path
    http: str
    channel: grpc.Channel
    tokens: dict[str, str]

    def cli(self, *argv: str) -> str:
        parser = argparse.ArgumentParser()
        keys_commands.add_parsers(parser.add_subparsers(dest="fleet_command"))
        out = io.StringIO()
        assert keys_commands.run(parser.parse_args(["keys", *argv, "--db", str(self.db)]), out) == 0
        return out.getvalue()

    def get(self, path: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
        req = urllib.request.Request(self.http + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if path.startswith("/v1/") else body.decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.http + "/v1", api_key=self.tokens[name], max_retries=0, timeout=60)

    def stub(self) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel)


@pytest.fixture(scope="module")
def keyed(site: Site) -> Iterator[Keyed]:
    tmp = site.tmp / "keyed"
    tmp.mkdir()
    db = tmp / "api-keys.db"
    store = KeyStore(db)
    tokens = {
        "good": store.create("good")[1],
        "victim": store.create("victim")[1],
        "slow": store.create("slow", rpm=2)[1],
        "narrow": store.create("narrow", ["other:x"])[1],
    }
    store.close()
    grpc_port, http_port = free_port(), free_port()
    env = {
        **FRONT_DOOR_ENV,
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
        "EDGEFLEET_FRONT_DOOR_AUTH": "keys",
        "EDGEFLEET_API_KEYS_DB": str(db),
    }
    orch = Orchestrator(tmp, site.broker, db=tmp / "registry.db", env=env)
    k = Keyed(orch, db, f"http://127.0.0.1:{http_port}", grpc.insecure_channel(f"127.0.0.1:{grpc_port}"), tokens)
    try:
        ok = wait_for(lambda: len(_served(k)) >= 1, timeout=30)
        assert ok, orch.log_path.read_text(errors="replace")[-3000:]
        yield k
    finally:
        k.channel.close()
        orch.stop()


def _served(k: Keyed) -> list[str]:
    try:
        status, body, _ = k.get("/v1/models", k.tokens["good"])
    except OSError:
        return []
    return [m["id"] for m in body["data"] if ":" not in m["id"] and m["nodes"]] if status == 200 else []


def _chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0, seed=1
    )


def test_open_site_warns_that_auth_is_off(site: Site) -> None:
    assert "FRONT DOOR AUTHENTICATION IS OFF" in site.orchestrator_log()


def test_no_key_is_refused(keyed: Keyed) -> None:
    status, body, headers = keyed.get("/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert headers.get("WWW-Authenticate") == "Bearer"
    bad = openai.OpenAI(base_url=keyed.http + "/v1", api_key="ef-000000000000-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        _chat(bad, "any")
    with pytest.raises(grpc.RpcError) as e:
        list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health and metrics stay open
    health = health_pb2_grpc.HealthStub(keyed.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status is not None
    assert keyed.get("/metrics")[0] == 200


def test_good_key_answers_on_http_and_grpc(keyed: Keyed) -> None:
    model = _served(keyed)[0]
    resp = _chat(keyed.client("good"), model)
    assert resp.choices[0].message.content is not None
    md = (("authorization", f"Bearer {keyed.tokens['good']}"),)
    chunks = list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=30, metadata=md))
    assert chunks and chunks[-1].usage.completion_tokens > 0
    metrics = keyed.get("/metrics")[1]
    assert 'edgefleet_front_door_key_requests_total{key="good"}' in metrics
    assert 'edgefleet_front_door_key_tokens_total{key="good"}' in metrics

    def usage() -> dict[str, Any]:
        return {k["name"]: k for k in json.loads(keyed.cli("list", "--json"))}

    assert wait_for(lambda: usage()["good"]["requests"] >= 2 and usage()["good"]["tokens"] > 0, timeout=5)
    table = keyed.cli("list")
    assert "good" in table and keyed.tokens["good"] not in table


def test_revoked_key_is_refused_within_a_second(keyed: Keyed) -> None:
    token = keyed.tokens["victim"]
    assert keyed.get("/v1/models", token)[0] == 200
    keyed.cli("revoke", "victim")
    revoked_at = time.monotonic()
    while keyed.get("/v1/models", token)[0] == 200:
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still answers after 1 s"
        time.sleep(0.05)
    status, body, _ = keyed.get("/v1/models", token)
    assert status == 401 and "revoked" in body["error"]["message"]
    md = (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        keyed.stub().Embed(pb.EmbedRequest(texts=["x"]), timeout=10, metadata=md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_key_over_its_rpm_gets_429(keyed: Keyed) -> None:
    token = keyed.tokens["slow"]
    assert keyed.get("/v1/models", token)[0] == 200
    assert keyed.get("/v1/models", token)[0] == 200
    status, body, headers = keyed.get("/v1/models", token)
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(headers["Retry-After"]) <= 60
    md = (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        keyed.stub().Embed(pb.EmbedRequest(texts=["x"]), timeout=10, metadata=md)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_model_not_in_allow_list_gets_403(keyed: Keyed) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        _chat(keyed.client("narrow"), _served(keyed)[0])
    assert "may not use" in str(e.value)
    md = (("authorization", f"Bearer {keyed.tokens['narrow']}"),)
    with pytest.raises(grpc.RpcError) as g:
        list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", adapter="y", max_tokens=2), timeout=10, metadata=md))
    assert g.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_secrets_never_in_logs(keyed: Keyed, site: Site) -> None:
    logs = keyed.orchestrator.log_path.read_text(errors="replace") + site.orchestrator_log()
    for token in keyed.tokens.values():
        assert token.split("-", 2)[2] not in logs
