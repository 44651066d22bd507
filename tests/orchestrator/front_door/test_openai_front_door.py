"""The OpenAI-compatible HTTP API end to end, with the official client and curl."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import site_identity
from tests.orchestrator.front_door.conftest import Site


@pytest.fixture(scope="module")
def client(site: Site) -> openai.OpenAI:
    return site_identity.site().openai(site.http + "/v1")


def curl(site: Site, path: str, body: str | bytes, *headers: str) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body, raw headers) of a POST through curl."""
    args = ["curl", "-sS", *site_identity.site().curl_args(), "-D", "-", "-X", "POST", site.http + path]
    args += ["-H", "content-type: application/json"]
    for h in headers:
        args += ["-H", h]
    r = subprocess.run([*args, "--data-binary", "@-"], input=body if isinstance(body, bytes) else body.encode(),
                       capture_output=True, timeout=60)  # fmt: skip
    head, _, payload = r.stdout.decode().partition("\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if payload.startswith("{") else {}, head.lower()


def test_chat_completion_names_the_node(site: Site, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=site.model(), messages=[{"role": "user", "content": "Say hi."}], max_tokens=6, temperature=0, seed=1
    )
    resp = raw.parse()
    node = raw.headers["x-edgefleet-node"]
    assert node in site.nodes
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert resp.model_extra is not None and resp.model_extra["edgefleet"]["node"] == node


def test_streaming_chat_with_usage_and_json_object(site: Site, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=site.model(),
        messages=[{"role": "user", "content": "Give a JSON object with a name."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        response_format={"type": "json_object"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.lstrip().startswith("{")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len(chunks) > 3


def test_completions_stop_and_curl_sse(site: Site, client: openai.OpenAI) -> None:
    resp = client.completions.create(model=site.model(), prompt="1, 2, 3,", max_tokens=12, temperature=0, stop=[" 6"])
    assert resp.choices[0].text and " 6" not in resp.choices[0].text
    body = {"model": site.model(), "prompt": "Once upon", "max_tokens": 4, "stream": True}
    status, _, head = curl(site, "/v1/completions", json.dumps(body))
    assert status == 200 and "text/event-stream" in head and "x-edgefleet-node: fd-" in head
    tls = site_identity.site().curl_args()
    out = subprocess.run(["curl", "-sN", *tls, site.http + "/v1/completions", "-d", json.dumps(body)],
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    events = [e for e in out.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_embeddings_and_models(site: Site, client: openai.OpenAI) -> None:
    e = client.embeddings.create(model=site.model(), input=["pump", "valve"], encoding_format="float")
    assert len(e.data) == 2 and len(e.data[0].embedding) > 100
    models = site.get("/v1/models")["data"]
    base = next(m for m in models if m["id"] == site.model())
    assert {"fd-a", "fd-b"} <= set(base["nodes"])


def test_base64_embeddings_through_the_official_client(site: Site, client: openai.OpenAI) -> None:
    """The official client asks for base64 by default and decodes it: the same vectors as floats."""
    floats = client.embeddings.create(model=site.model(), input=["pump", "valve"], encoding_format="float")
    raw = client.embeddings.with_raw_response.create(model=site.model(), input=["pump", "valve"])
    sent = json.loads(raw.http_response.text)["data"]
    assert all(isinstance(d["embedding"], str) for d in sent), "the client asked for base64 and got it"
    decoded = raw.parse()
    assert len(decoded.data) == 2
    for got, want in zip(decoded.data, floats.data, strict=True):
        assert len(got.embedding) == len(want.embedding) > 100
        assert got.embedding == pytest.approx(want.embedding, abs=1e-6)  # float32 on the wire
    status, body, _ = curl(site, "/v1/embeddings", json.dumps({"model": site.model(), "input": "pump",
                                                                "encoding_format": "base64"}))  # fmt: skip
    vector = struct.unpack(f"<{len(floats.data[0].embedding)}f", base64.b64decode(body["data"][0]["embedding"]))
    assert status == 200 and list(vector) == pytest.approx(floats.data[0].embedding, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "M", "messages": "hi"}, "messages"),
        ({"model": "M", "messages": []}, "messages"),
        ({"model": "M", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "M", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        (
            {"model": "M", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "9"},
            "max_completion_tokens",
        ),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        (
            {"model": "M", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            {"model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        (
            {"model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
        ),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "top_k": 3}, "top_k"),
        ({"model": "M", "messages": [{"role": "user", "content": "x"}], "variables": {"a": "b"}}, "variables"),
    ],
)
def test_every_bad_body_gets_a_400_naming_the_field(site: Site, body: dict[str, Any], param: str) -> None:
    if body.get("model") == "M":
        body["model"] = site.model()
    status, err, _ = curl(site, "/v1/chat/completions", json.dumps(body))
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["code"] == "invalid_request"
    assert param.split(".")[0].split("[")[0] in err["error"]["message"]


def test_bad_json_unknown_model_and_adapter_then_it_keeps_serving(site: Site, client: openai.OpenAI) -> None:
    status, err, _ = curl(site, "/v1/chat/completions", b"{not json")
    assert status == 400 and "JSON" in err["error"]["message"]
    status, err, _ = curl(site, "/v1/completions", b"[1, 2]")
    assert status == 400
    status, err, _ = curl(site, "/v1/completions", b"\xff\xfe")
    assert status == 400
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["param"] == "model" and nf.value.code == "no_node"  # type: ignore[index]
    assert nf.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model=f"{site.model()}:pirate", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["param"] == "adapter" and nf.value.code == "no_node"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="no-such-model", input=["x"])
    assert nf.value.body["param"] == "model" and nf.value.code == "no_node"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=site.model(), input=[])
    assert bad.value.code == "invalid_request" and bad.value.param == "input"
    ok = client.completions.create(model=site.model(), prompt="Hi", max_tokens=2)
    assert ok.choices[0].text is not None


def test_metrics_parse(site: Site, client: openai.OpenAI) -> None:
    # one request of its own: the counters must not depend on which tests ran before (any order)
    client.completions.create(model=site.model(), prompt="Hi", max_tokens=1)
    families = {f.name: f for f in text_string_to_metric_families(site.metrics())}
    for name in (
        "edgefleet_front_door_requests",
        "edgefleet_front_door_retries",
        "edgefleet_front_door_failovers",
        "edgefleet_front_door_cooldowns",
        "edgefleet_front_door_buffer_depth",
        "edgefleet_front_door_buffer_wait_seconds",
        "edgefleet_front_door_added_latency_seconds",
        "edgefleet_fleet_nodes",
    ):
        assert name in families, name
    ok = [s for s in families["edgefleet_front_door_requests"].samples if s.labels.get("outcome") == "ok"]
    assert sum(s.value for s in ok if s.name.endswith("_total")) > 0
    online = [s for s in families["edgefleet_fleet_nodes"].samples if s.labels["state"] == "online"]
    assert online[0].value >= 2


def _in_flight(site: Site) -> float:
    families = text_string_to_metric_families(site.metrics())
    return sum(s.value for f in families if f.name == "edgefleet_front_door_in_flight" for s in f.samples)


def test_a_client_that_goes_away_mid_stream_frees_its_slot(site: Site, client: openai.OpenAI) -> None:
    from edgefleet.proto.v1 import inference_pb2 as pb
    from tests.conftest import wait_for

    stream = client.completions.create(model=site.model(), prompt="Count: 1, 2, 3,", max_tokens=400, stream=True)
    next(iter(stream))
    stream.close()
    call = site.stub.Generate(pb.GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=400), timeout=60)
    next(call)
    call.cancel()
    assert wait_for(lambda: _in_flight(site) == 0, timeout=10), site.metrics()
    assert client.completions.create(model=site.model(), prompt="Hi", max_tokens=2).choices
