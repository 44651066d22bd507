"""The MQTT contract: topics, names, payload validation and templates (pure functions)."""

from __future__ import annotations

import json

import pytest

from edgefleet.proto.payloads import (
    MAX_PAYLOAD_BYTES,
    DesiredState,
    NodeStatus,
    PayloadError,
    TemplateSpec,
    parse_payload,
)
from edgefleet.proto.templates import MissingVariable, TemplateError, compile_template, declared_variables
from edgefleet.proto.topics import TOPIC_TABLE, Topics, valid_name
from tests.conftest import ROOT


def test_topics_live_under_the_site_root_and_parse_back() -> None:
    t = Topics.for_site("plant-7")
    assert t.node_status("n1") == "edgefleet/plant-7/node/n1/status"
    assert t.node_of(t.node_status("n1"), "status") == "n1"
    assert t.node_of(t.node_reported("n1"), "status") is None
    assert t.desired_target(t.desired_group("line-2")) == ("group", "line-2")
    assert t.desired_target("other/root/desired/group/x") is None
    assert Topics.for_site("a", "factory/{site}").root == "factory/a/"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a+b", "#", "x..y", ".hidden", "a" * 65])
def test_names_with_separators_wildcards_or_dots_are_invalid(bad: str) -> None:
    assert not valid_name(bad)
    with pytest.raises(ValueError, match="invalid"):
        Topics.for_site(bad)


def test_readme_documents_every_topic() -> None:
    readme = (ROOT / "README.md").read_text()
    for pattern, *_ in TOPIC_TABLE:
        assert f"`{pattern}`" in readme, pattern


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{oops", "not JSON"),
        (b"\xff", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"v": 2, "node_id": "a", "state": "online"}).encode(), "version 2"),
        (json.dumps({"node_id": "a", "state": "online"}).encode(), "version None"),
        (json.dumps({"v": 1, "node_id": "a", "state": "asleep"}).encode(), "state"),
        (json.dumps({"v": 1, "node_id": "a", "state": "online", "extra": 1}).encode(), "extra"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "limit"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(raw: bytes, words: str) -> None:
    with pytest.raises(PayloadError, match=words):
        parse_payload(NodeStatus, raw)


def test_desired_state_round_trips_and_validates_its_templates() -> None:
    spec = TemplateSpec(name="t", version="1.0", template="Hi {{ who }}", variables=["who"])
    doc = DesiredState(site="s", target={"kind": "group", "name": "g"}, generation=3, templates={"t": spec})
    assert parse_payload(DesiredState, doc.dumps()) == doc
    bad = json.loads(doc.dumps())
    bad["templates"]["t"]["name"] = "../t"
    with pytest.raises(PayloadError, match="invalid"):
        parse_payload(DesiredState, json.dumps(bad).encode())
    bad["templates"]["t"]["name"] = "t"
    bad["generation"] = 0
    with pytest.raises(PayloadError, match="generation"):
        parse_payload(DesiredState, json.dumps(bad).encode())


def test_templates_render_in_a_sandbox_with_declared_variables() -> None:
    t = compile_template(
        TemplateSpec(
            name="t",
            version="1",
            template="{{ sensor }}: {{ value }}",
            system="Site {{ sensor }}",
            variables=["sensor", "value"],
        )
    )
    assert t.render({"sensor": "p3", "value": "7"}) == ("Site p3", "p3: 7")
    with pytest.raises(MissingVariable, match="value"):
        t.render({"sensor": "p3"})
    with pytest.raises(TemplateError, match="does not declare"):
        t.render({"sensor": "p3", "value": "7", "other": "x"})
    escape = compile_template(TemplateSpec(name="e", version="1", template="{{ s.__class__ }}", variables=["s"]))
    with pytest.raises(TemplateError, match="sandbox"):
        escape.render({"s": "x"})
    with pytest.raises(TemplateError, match="undeclared"):
        compile_template(TemplateSpec(name="u", version="1", template="{{ nope }}"))
    with pytest.raises(TemplateError, match="syntax error"):
        compile_template(TemplateSpec(name="s", version="1", template="{% if %}"))
    assert declared_variables("{{ a }} {% for x in b %}{{ x }}{% endfor %}") == ["a", "b"]
