"""Evaluation sets: loading (JSON, YAML, clear errors naming the case and field), scoring, figures. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.proto.evaluation_sets import (
    ANSWERED,
    Answer,
    CaseScore,
    EvalCase,
    EvaluationSetError,
    case_failed,
    document_of,
    figures,
    load_evaluation_set,
    parse_evaluation_set,
    score_answer,
)

ROOT = Path(__file__).resolve().parents[2]
TOOLS = [{"type": "function", "function": {"name": "open_ticket", "parameters": {"type": "object"}}}]

YAML_SET = """
name: maintenance
cases:
  - id: triage
    template: triage
    variables: {sensor: pump-3, reading: "7.1 mm/s"}
    contains: [Pump, bearing]
  - id: json
    prompt: Is it a fault? Answer in JSON.
    system: Be short.
    max_tokens: 24
    json_schema: {type: object, properties: {fault: {type: boolean}}, required: [fault]}
  - id: manual
    prompt: What does A03 mean?
    collection: manual
    source: manuals/tc5 alarm.md
  - id: ticket
    prompt: Open a ticket.
    tools: [{type: function, function: {name: open_ticket, parameters: {type: object}}}]
    tool_choice: required
    tool: open_ticket
"""


def _case(**kw: object) -> EvalCase:
    return EvalCase.model_validate({"id": "c", "prompt": "hi", **kw})


def test_yaml_and_json_files_load(tmp_path: Path) -> None:
    p = tmp_path / "eval.yaml"
    p.write_text(YAML_SET)
    s = load_evaluation_set(p)
    assert s.name == "maintenance" and [c.id for c in s.cases] == ["triage", "json", "manual", "ticket"]
    assert s.cases[0].variables == {"sensor": "pump-3", "reading": "7.1 mm/s"} and s.cases[0].max_tokens == 48
    assert s.cases[1].check_names() == ["json_schema"] and s.cases[3].tool_choice == "required"
    # the shipped example is a valid set (it asks the `triage` template scripts/run pushes)
    example = load_evaluation_set(ROOT / "deploy" / "examples" / "eval-maintenance.json")
    assert {c.template for c in example.cases} == {"triage", None}


@pytest.mark.parametrize(
    ("text", "suffix", "words"),
    [
        ('{"cases": [{"id": "a", "prompt": "x", "pattern": "("}]}', ".json", ["case 'a' (cases[0])", "regular expr"]),
        ('{"cases": [{"id": "a", "prompt": "x", "max_tokens": 0}]}', ".json", ["case 'a'", "'max_tokens'"]),
        ('{"cases": [{"id": "a", "prompt": "x", "colour": 1}]}', ".json", ["case 'a'", "'colour'", "not permitted"]),
        ('{"cases": [{"id": "a"}]}', ".json", ["case 'a'", "exactly one of prompt"]),
        ('{"cases": [{"id": "a", "prompt": "x", "template": "t"}]}', ".json", ["exactly one of prompt"]),
        ('{"cases": [{"id": "a", "prompt": "x", "tool": "t"}]}', ".json", ["tool 't' is not one of"]),
        ('{"cases": [{"id": "a", "prompt": "x", "source": "d"}]}', ".json", ["source needs collection"]),
        ('{"cases": [{"id": "a", "template": "t", "system": "s"}]}', ".json", ["system is for a prompt case"]),
        ('{"cases": [{"id": "a", "prompt": "x", "json_schema": {"type": 3}}]}', ".json", ["not a valid JSON schema"]),
        ('{"cases": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}', ".json", ["'a' is used twice"]),
        ('{"cases": [{"id": "bad/id", "prompt": "x"}]}', ".json", ["cases[0]", "'id'", "invalid"]),
        ('{"cases": []}', ".json", ["field 'cases'", "at least 1"]),
        ('{"cases": [', ".json", ["not valid JSON"]),
        ("cases: [\n  - {id: a, prompt: x, tools: [{type: x}]}\n", ".yaml", ["not valid YAML"]),
        ("cases:\n  - {id: a, prompt: x, tools: [{type: x}]}\n", ".yaml", ["case 'a'", "tools[0] must be"]),
        ("- {id: a, prompt: x, max_tokens: 9999}\n", ".yml", ["case 'a'", "'max_tokens'", "512"]),
        ("just text", ".yaml", ["an object with 'cases'"]),
    ],
)
def test_bad_files_say_which_case_and_field(tmp_path: Path, text: str, suffix: str, words: list[str]) -> None:
    p = tmp_path / f"eval{suffix}"
    p.write_text(text)
    with pytest.raises(EvaluationSetError) as e:
        load_evaluation_set(p)
    message = str(e.value)
    assert message.startswith(str(p)), message
    for w in words:
        assert w in message, message


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(EvaluationSetError, match="cannot read"):
        load_evaluation_set(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_text(" " * (600 * 1024))
    with pytest.raises(EvaluationSetError, match="over the"):
        load_evaluation_set(big)
    with pytest.raises(EvaluationSetError, match="51"):
        parse_evaluation_set({"cases": [{"id": f"c{i}", "prompt": "x"} for i in range(51)]})


def test_scoring_each_check() -> None:
    case = _case(contains=["Pump", "bearing"], pattern=r"\d+ mm/s")
    s = score_answer(case, Answer(text="The PUMP at 7 mm/s is fine", latency_ms=12.0, tokens_per_s=50.0))
    assert s.checks == {"contains:Pump": True, "contains:bearing": False, "pattern": True}
    assert (s.passed, s.error, s.latency_ms, s.tokens_per_s) == (2, "", 12.0, 50.0)

    schema = {"type": "object", "properties": {"fault": {"type": "boolean"}}, "required": ["fault"]}
    js = _case(json_schema=schema)
    assert score_answer(js, Answer(text=' {"fault": true}\n')).checks == {"json_schema": True}
    for bad in ('{"fault": "yes"}', '{"fault": tr', "no", "[" * 100 + "]" * 100):
        s = score_answer(js, Answer(text=bad))
        assert s.checks == {"json_schema": False} and s.schema_failed

    tool = _case(tools=TOOLS, tool="open_ticket")
    assert score_answer(tool, Answer(tool_calls=["open_ticket"])).checks == {"tool": True}
    assert score_answer(tool, Answer(text="I opened it")).checks == {"tool": False}

    rag = _case(collection="manual", source="manuals/tc5 alarm.md")
    cited = Answer(sources=["manual/other.md#0", "manual/manuals/tc5%20alarm.md#3"])
    assert score_answer(rag, cited).checks == {"source": True}
    assert score_answer(rag, Answer(sources=["manual/other.md#0"])).checks == {"source": False}
    assert document_of("manual/a%23b.md#12", "manual") == "a#b.md"

    bare = _case()
    assert score_answer(bare, Answer(text="")).checks == {ANSWERED: True}


def test_a_failed_case_fails_every_check() -> None:
    s = case_failed(_case(contains=["a"], pattern="b"), "NO_NODE: nothing", 5.0)
    assert s.checks == {"contains:a": False, "pattern": False} and s.error == "NO_NODE: nothing"
    assert case_failed(_case(), "").checks == {ANSWERED: False}


def test_a_constrained_schema_cannot_stand_beside_tools() -> None:
    with pytest.raises(ValueError, match="constrained: false"):
        _case(tools=TOOLS, json_schema={"type": "object"})
    assert _case(tools=TOOLS, json_schema={"type": "object"}, constrained=False).constrained is False


def test_figures() -> None:
    def ok(latency: float, tps: float, passed: bool = True, schema: bool = False) -> CaseScore:
        return CaseScore(case="c", checks={"a": passed, "b": True}, latency_ms=latency, tokens_per_s=tps,
                         schema_failed=schema)  # fmt: skip

    scores = [ok(float(i), 10.0 * i) for i in range(1, 20)] + [ok(100.0, 0.0, passed=False, schema=True)]
    scores.append(CaseScore(case="e", checks={"a": False}, error="timeout", latency_ms=9999.0))
    f = figures(scores)
    assert f.cases == 21 and f.errors == 1 and f.schema_failures == 1
    assert f.score == round(39 / 41, 6)
    assert f.p95_ms == 19.0  # nearest rank over the 20 answered cases; the error's latency does not count
    assert f.tokens_per_s == 100.0  # median of the known speeds (a 0 is unknown, not slow)
    assert figures([]).model_dump() == {
        "score": 0.0, "p95_ms": 0.0, "tokens_per_s": 0.0, "schema_failures": 0, "errors": 0, "cases": 0
    }  # fmt: skip
    assert set(f.as_dict()) == {"score", "p95_ms", "tokens_per_s", "schema_failures", "errors", "cases"}
