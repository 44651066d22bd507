"""Property-based: OpenAI request bodies, at the schema and over real HTTPS against the front door.

Schema layer (`openai_schema.parse_chat`, `parse_completion`, `parse_embeddings`): arbitrary JSON
values (lone surrogates and non-finite numbers among them) and single mutations of valid chat,
completions and embeddings bodies (a field dropped, set to any JSON value, an unknown field, a
message, a content part or a nested option changed). Each is accepted, and then its gRPC request
serializes, or refused with a `BodyError`, which the front door answers with HTTP 400 and
OpenAI's error object naming the field (`param` is a field of the body, or a required one);
never another exception.

HTTPS: random bytes, random JSON and mutated valid bodies (max_tokens 1-4, so an accepted one is
fast) posted to the running front door's three POST endpoints, plus a few fixed nasty bodies
(nested 100 000 deep, a lone surrogate, NaN). Every answer is one of 200, 400, 401, 404, 413, 422,
429, never a 500; each error is OpenAI's error object; afterwards `GET /v1/models` still answers.

Cases: 500 (schema) + 40 (HTTPS, random) + 6 (HTTPS, fixed) = 546.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.orchestrator.front_door import openai_schema as schema
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.orchestrator.front_door.conftest import Site

ALLOWED = {200, 400, 401, 404, 413, 422, 429}
REQUIRED = {"model", "messages", "prompt", "input"}
PARSERS = {"chat": schema.parse_chat, "completions": schema.parse_completion, "embeddings": schema.parse_embeddings}
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}

texts = st.text(max_size=12) | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from([0, 1, 4, -1, 0.5, 2.5, "", "text", "json_object", "user", "system", "m"])
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "developer"]),
            "content": st.text(max_size=20) | st.just([{"type": "text", "text": "hi"}]),
        }
    ),
    min_size=1,
    max_size=3,
)


def options(model: str) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "max_tokens": st.integers(1, 4),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**32 - 1),
        "stop": st.sampled_from(["\n", ["a", "b"]]),
        "n": st.just(1),
        "stream": st.booleans(),
        "user": st.text(max_size=8),
        "response_format": st.sampled_from(
            [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {}}}]
        ),
    }


def valid_bodies(model: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    common = {k: v for k, v in options(model).items() if k != "max_tokens"}
    chat = st.fixed_dictionaries(
        {"model": st.just(model), "messages": messages, "max_tokens": st.integers(1, 4)}, optional=common
    )
    completion = st.fixed_dictionaries(
        {"model": st.just(model), "prompt": st.text(min_size=1, max_size=20), "max_tokens": st.integers(1, 4)},
        optional={k: v for k, v in common.items() if k != "response_format"},
    )
    embedding = st.fixed_dictionaries(
        {"model": st.just(model), "input": st.text(min_size=1, max_size=20) | st.lists(st.just("a b"), min_size=1)},
        optional={"encoding_format": st.sampled_from(["float", "base64"])},
    )
    return (
        st.tuples(st.just("chat"), chat)
        | st.tuples(st.just("completions"), completion)
        | st.tuples(st.just("embeddings"), embedding)
    )


@st.composite
def mutated(draw: st.DrawFn, model: str, keep_max_tokens: bool = False) -> tuple[str, Any]:
    """A valid body with one change (or, at times, none)."""
    endpoint, body = draw(valid_bodies(model))
    how = draw(st.sampled_from(["none", "drop", "set", "add", "message", "nested"]))
    keys = [k for k in body if not (keep_max_tokens and k == "max_tokens")]
    if how == "drop" and keys:
        del body[draw(st.sampled_from(keys))]
    elif how == "set" and keys:
        body[draw(st.sampled_from(keys))] = draw(json_values)
    elif how == "add":
        extra = sorted(schema.CHAT_FIELDS | schema.COMPLETION_FIELDS | schema.EMBEDDING_FIELDS - {"max_tokens"})
        body[draw(st.sampled_from(extra) | texts)] = draw(json_values)
    elif how == "message" and "messages" in body:
        m = body["messages"][draw(st.integers(0, len(body["messages"]) - 1))]
        m[draw(st.sampled_from(["role", "content", "name", "tool_calls"]) | texts)] = draw(json_values)
    elif how == "nested":
        key = draw(st.sampled_from(["response_format", "stream_options", "variables", "stop", "input"]))
        body[key] = draw(
            st.fixed_dictionaries({"type": json_values}, optional={"json_schema": json_values})
            | st.dictionaries(texts, json_values, max_size=3)
            | st.lists(json_values, max_size=3)
        )
        if key == "stream_options":
            body["stream"] = True
    return endpoint, body


def names_a_field(param: str | None, body: Any) -> bool:
    if not isinstance(body, dict):
        return param is None
    if param is None:
        return False
    keys = {k.encode(errors="replace").decode() for k in body} | REQUIRED
    return any(param == k or param.startswith((k + ".", k + "[")) for k in keys)


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated("tiny") | st.tuples(st.sampled_from(sorted(PARSERS)), json_values))
def test_any_body_is_accepted_or_refused_naming_the_field(case: tuple[str, Any]) -> None:
    endpoint, body = case
    try:
        call = PARSERS[endpoint](body)
    except schema.BodyError as e:
        assert names_a_field(e.param, body), f"{endpoint}: param {e.param!r} for {body!r}"
        assert isinstance(e.message, str) and e.message
        return
    if isinstance(call, schema.EmbeddingCall):
        pb.EmbedRequest(texts=call.texts).SerializeToString()
        assert call.model.strip() and call.texts
    else:
        call.request.SerializeToString()
        assert call.model and (call.request.prompt or call.request.messages or call.request.template)


# -- over HTTPS -----------------------------------------------------------------------------------------------
def post(site: Site, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(site.http + path, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with site_identity.site().urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def check_answer(status: int, answer: Any, body: bytes) -> None:
    assert status in ALLOWED, f"{status} for {body[:300]!r}: {answer!r:.500}"
    if status != 200:
        assert isinstance(answer, dict) and set(answer) == {"error"}, answer
        error = answer["error"]
        assert set(error) >= {"message", "type", "param", "code"} and isinstance(error["message"], str), error


@pytest.fixture(scope="module")
def model(site: Site) -> str:
    return site.model()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_body_over_https_gets_an_openai_answer_never_a_500(site: Site, model: str, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes", "json", "mutated", "mutated"]))
    endpoint = data.draw(st.sampled_from(sorted(PATHS)))
    if kind == "bytes":
        body = data.draw(st.binary(max_size=200))
    elif kind == "json":
        body = json.dumps(data.draw(json_values)).encode("utf-8", "surrogatepass")
    else:
        endpoint, doc = data.draw(mutated(model, keep_max_tokens=True))
        if isinstance(doc, dict) and endpoint != "embeddings":
            doc.setdefault("max_tokens", 2)  # an accepted body stays fast
        body = json.dumps(doc).encode("utf-8", "surrogatepass")
    status, answer = post(site, PATHS[endpoint], body)
    check_answer(status, answer, body)


NASTY = [
    ("chat", b"[" * 100_000 + b"]" * 100_000),
    ("completions", b'{"model": "m", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("chat", b'{"model": "MODEL", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 1}'),
    ("completions", b'{"model": "MODEL", "prompt": "hi", "temperature": NaN, "max_tokens": 1}'),
    ("embeddings", b'{"model": "MODEL", "input": ["ok", "\\udfff"]}'),
    ("chat", b'{"model": "MODEL:\\ud800", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'),
    # found by the schema property once: an unhashable role raised TypeError (a 500)
    ("chat", b'{"model": "MODEL", "messages": [{"role": ["user"], "content": "hi"}], "max_tokens": 1}'),
    ("chat", b'{"model": "MODEL", "messages": [{"role": {"a": 1}, "content": "hi"}], "max_tokens": 1}'),
]


@pytest.mark.parametrize(("endpoint", "body"), NASTY, ids=range(len(NASTY)))
def test_nasty_bodies_get_a_400(site: Site, model: str, endpoint: str, body: bytes) -> None:
    status, answer = post(site, PATHS[endpoint], body.replace(b"MODEL", model.encode()))
    check_answer(status, answer, body)
    assert status == 400, answer


def test_the_front_door_still_answers_afterwards(site: Site) -> None:
    with site_identity.site().urlopen(site.http + "/v1/models") as r:
        assert r.status == 200 and json.loads(r.read())["data"]
